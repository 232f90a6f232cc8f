"""Measuring the models a compression run reports: the float model, uniform policies and searched
policies, each on the held-out split after BatchNorm re-estimation on training images."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Iterable, Mapping

from torch.utils.data import DataLoader

from mpqfx.cost.report import bitops
from mpqfx.data.sampling import ClassSubset
from mpqfx.data.spec import DataSpec, batches_at, calibration_indices
from mpqfx.evaluate import evaluate, recalibrated_bn
from mpqfx.quant.policy import Policy
from mpqfx.recipe import Recipe
from mpqfx.rundir import searched_name, uniform_name
from mpqfx.supernet import Supernet


@dataclass
class PolicyResult:
    """One evaluated model: the float one, a uniform policy or a searched policy."""

    name: str
    kind: str  # "float", "uniform" or "searched"
    accuracy: float
    loss: float
    bitops: float
    size_bits: float
    compression: float
    target: str | None = None
    policy: Policy | None = None
    policy_file: str | None = None
    exports: dict[str, Any] = field(default_factory=dict)
    selection: str | None = None  # searched: which candidate won on the search images, and by how much
    export_error: str | None = None  # searched: why its export failed (one line), None when it did not

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["policy"] = None if self.policy is None else self.policy.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PolicyResult":
        policy = None if data.get("policy") is None else Policy.from_dict(data["policy"])
        return cls(**{**data, "policy": policy})


def policy_label(kind: str, name: str) -> str:
    """What a person reads for a reported model: "float", "uniform 4/4", or "mixed" for a searched
    mixed-precision policy (its budget is shown next to it)."""
    return "mixed" if kind == "searched" else name


def policy_name(row: Mapping[str, Any]) -> str | None:
    """The name ``mpqfx export --policy`` takes for a report row: ``uniform-4``, ``mixed@uniform-4``, or
    ``SEARCH/mixed@uniform-4`` for a later search kept in RUN/searches/SEARCH; None for the float model."""
    if row["kind"] == "searched":
        return f"{row['search']}/{searched_name(row['target'])}" if row.get("search") else searched_name(row["target"])
    uniform = re.fullmatch(r"uniform (\d+)/\1", row["name"]) if row["kind"] == "uniform" else None
    return uniform_name(int(uniform[1])) if uniform else None


class PolicyEvaluator:
    """Top-1 accuracy and loss of policies on the held-out split, each after re-estimating the
    BatchNorm statistics it uses on ``recipe.evaluate.bn_images`` training images."""

    def __init__(self, spec: DataSpec, float_model, recipe: Recipe):
        self.spec, self.float_model, self.config = spec, float_model, recipe.evaluate

    @cached_property
    def train_set(self) -> ClassSubset:
        """The run's training images without augmentation (what BatchNorm is re-estimated on)."""
        return self.spec.split("train", self.float_model, train=False)

    @cached_property
    def calibration_indices(self) -> list[int]:
        return calibration_indices(self.train_set, self.config.bn_images)

    @cached_property
    def calibration(self) -> list:
        return batches_at(self.train_set, self.calibration_indices, self.config.batch_size)

    @cached_property
    def val_batches(self) -> DataLoader:
        """The held-out split in order, read again for every evaluation (an ImageNet val split does not fit in memory)."""
        val_set = self.spec.split("val", self.float_model, train=False)
        return DataLoader(val_set, batch_size=self.config.batch_size, shuffle=False)

    @property
    def val_images(self) -> int:
        return len(self.val_batches.dataset)

    def measure(self, net: Supernet, name: str, kind: str, policy: Policy | None) -> PolicyResult:
        """``policy`` (None: the float model, i.e. bypass) measured on the held-out split."""
        run_policy = policy if policy is not None else Policy.bypass(net.layers)
        with recalibrated_bn(net, run_policy, self.calibration):
            result = evaluate(net, run_policy, self.val_batches)
        cost = bitops(net, run_policy)
        return PolicyResult(name, kind, result.accuracy, result.loss, cost.total, cost.size_bits, cost.compression,
                            policy=policy)


def uniform_policies(net: Supernet, bits: Iterable[int]) -> list[tuple[str, Policy]]:
    """Uniform policies for ``bits`` that every searchable layer allows, named "uniform W/A"."""
    out = []
    for b in bits:
        if all(b in l.w_bits and b in l.a_bits for l in net.layers if len(l.w_bits) > 1 or len(l.a_bits) > 1):
            out.append((f"uniform {b}/{b}", Policy.uniform(net, b)))
    return out
