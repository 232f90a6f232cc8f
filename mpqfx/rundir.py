"""The run directory: one place per compression run, laid out so that any later command
(resume, search, export) can rebuild what it needs from it alone.

    run.json          model spec, data spec, recipe name, wall and CPU seconds per finished phase
    recipe.yaml       the resolved recipe
    float.pt          the float starting point (trained, pretrained, loaded or given), as a supernet
    float.json        the float model's measured accuracy
    checkpoint.pt     supernet training checkpoint (resume); checkpoint.prev.pt the one before it
    supernet.pt       the trained supernet (search, export)
    metrics.jsonl     training metrics
    policies/*.yaml   searched policies, ``mixed@<budget>.yaml`` (``mixed@uniform-4.yaml``: the mixed
                      policy searched under the BitOPs of uniform 4/4); runs before that name wrote
                      ``uniform-4.yaml``, still read
    sensitivities.json  measured per-layer sensitivities (ILP objective), reused by later searches
    report.json / report.md / pareto.png / bits.png
    export/           ONNX and integer safetensors files
    searches/NAME/    policies of later `mpqfx search` runs and their search.json (never policies/)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mpqfx.data.spec import DataSpec, batches_at, calibration_indices, search_indices
from mpqfx.errors import MpqfxError
from mpqfx.io import atomic_write_text
from mpqfx.models import create_model
from mpqfx.supernet import Supernet
from mpqfx.train.checkpoint import peek_progress, previous_path

RUN_FORMAT = "mpqfx.run/1"
SEARCHED_PREFIX = "mixed@"  # a searched policy's name: mixed@<budget>, beside the uniform policies' uniform-<bits>


class RunDir:
    """Paths of a run directory and its ``run.json``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.run_json = self.root / "run.json"
        self.recipe = self.root / "recipe.yaml"
        self.float_weights = self.root / "float.pt"
        self.float_result = self.root / "float.json"
        self.checkpoint = self.root / "checkpoint.pt"
        self.supernet = self.root / "supernet.pt"
        self.metrics = self.root / "metrics.jsonl"
        self.policies = self.root / "policies"
        self.report_json = self.root / "report.json"
        self.report_md = self.root / "report.md"
        self.pareto_png = self.root / "pareto.png"
        self.bits_png = self.root / "bits.png"
        self.export = self.root / "export"

    def remove_temp_files(self) -> list[Path]:
        """Delete the temporary files a killed run left behind (an atomic write cut short)."""
        stale = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for path in stale:
            path.unlink()
        return stale

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_text(self.run_json, json.dumps({"format": RUN_FORMAT, **meta}, indent=1, sort_keys=True))

    def restart_point(self) -> str:
        """Where ``mpqfx compress --resume`` continues this run, read from the files it holds."""
        if not self.float_weights.is_file():
            return _training_point("the float warm start", self.root / "float" / self.checkpoint.name)
        if not self.supernet.is_file():
            return _training_point("supernet training", self.checkpoint)
        targets = self.meta().get("targets", [])
        found = sum(searched_policy_path(self.policies, t).is_file() for t in targets)
        if found < len(targets):
            return f"the search ({found} of {len(targets)} policies found)"
        return "the evaluation (warm start, supernet training and search are done)"

    def meta(self) -> dict[str, Any]:
        if not self.run_json.is_file():
            raise MpqfxError(f"{str(self.root)!r} is not an mpqfx run directory (no run.json)")
        try:
            meta = json.loads(self.run_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MpqfxError(f"{str(self.run_json)!r} is corrupt: {exc}") from None
        if meta.get("format") != RUN_FORMAT:
            raise MpqfxError(f"{str(self.run_json)!r}: unknown format {meta.get('format')!r} (expected {RUN_FORMAT})")
        return meta


def _training_point(phase: str, checkpoint: Path) -> str:
    for path in (checkpoint, previous_path(checkpoint)):
        progress = peek_progress(path) if path.is_file() else None
        if progress is not None:
            step, total = progress
            return f"{phase} at step {step}{f' of {total}' if total else ''} ({path.name})"
    return f"{phase} from its start"


def run_root(path: str | Path) -> Path:
    """The run directory of ``path``: the path itself, or the folder of a supernet file."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def policy_stem(target: str) -> str:
    """A target string as a file-name part: ``uniform:4`` -> ``uniform-4``, ``bitops=uniform:6,size=6x`` ->
    ``bitops-uniform-6_size-6x``."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", target.replace(",", "_")).strip("-") or "policy"


def searched_name(target: str) -> str:
    """The name of the mixed policy searched for a target: ``uniform:4`` -> ``mixed@uniform-4`` (``uniform-4``
    names the uniform policy itself). Letters, digits and ``@._-`` only: a file name on every OS."""
    return f"{SEARCHED_PREFIX}{policy_stem(target)}"


UNIFORM_NAME = re.compile(r"uniform-(\d+)")  # what uniform_name writes; mixed@uniform-4 is the policy searched at its budget


def uniform_name(bits: int) -> str:
    """The name of the uniform policy at ``bits``/``bits``: ``uniform-4``."""
    return f"uniform-{bits}"


def policy_filename(target: str) -> str:
    """The file name of the policy searched for a target: ``uniform:4`` -> ``mixed@uniform-4.yaml``."""
    return f"{searched_name(target)}.yaml"


def searched_policy_path(folder: Path, target: str) -> Path:
    """Where ``folder`` keeps the policy searched for ``target``: ``mixed@<stem>.yaml``, or ``<stem>.yaml``
    when only that file is there (the name runs and searches made before ``mixed@`` used)."""
    path, legacy = folder / policy_filename(target), folder / f"{policy_stem(target)}.yaml"
    return legacy if legacy.is_file() and not path.is_file() else path


def search_data(run_dir: str | Path, net: Supernet, search_images: int | None = None) -> tuple[list, list]:
    """(search batches, BatchNorm calibration batches) for searches that evaluate the supernet,
    rebuilt from the run's data spec; empty lists for runs that record no data.

    The calibration images are the ones ``compress`` re-estimates BatchNorm on before it reports
    a policy; the ``search_images`` (default: the recipe's ``evaluate.search_images``) are drawn
    from the other training images, unless the split is too small for both (``search_indices``).
    """
    run = RunDir(run_dir)
    if not run.run_json.is_file():
        return [], []
    spec = DataSpec.from_dict(run.meta()["data"])
    evaluate = net.recipe.evaluate
    count = evaluate.search_images if search_images is None else search_images
    model = create_model(net.model_spec.name, **net.model_spec.kwargs) if net.model_spec else None
    train = spec.split("train", model, train=False)
    calibration = batches_at(train, calibration_indices(train, evaluate.bn_images), evaluate.batch_size)
    batches = batches_at(train, search_indices(train, count, evaluate.bn_images), evaluate.batch_size)
    return batches, calibration
