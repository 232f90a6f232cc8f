"""Candidate policies measured on the search images, and the rule that a search never returns a
policy that measures worse there than a uniform policy meeting the same budget.

A candidate is measured as ``compress`` reports policies: BatchNorm statistics re-estimated on
the calibration images, then loss and top-1 accuracy on the fixed search images (distinct from
the calibration images, mpqfx/rundir.py). Measurements are kept per policy, so a policy that
several steps consider (the ILP's floored optima, the uniform baselines) is measured once.

The baselines are the max policy when it meets the budget, and the uniform policy b/b (every
searchable layer at b bits for weights and activations, the nearest allowed bits elsewhere) with
the highest b that meets it: every lower uniform policy has fewer bits in every layer. Uniform
weight/activation trade-offs (8/2 or 2/6 under a uniform-4/4 BitOPs budget) are not measured:
on the demo supernet they scored 45% and 59% against uniform 4/4's 70% (docs/benchmarks.md) and
each costs a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mpqfx.evaluate import evaluate, recalibrated_bn
from mpqfx.quant.policy import Policy
from mpqfx.search.constraints import Constraints, candidate_bits

if TYPE_CHECKING:
    from mpqfx.search.backend import Batch, SearchResult
    from mpqfx.supernet import Supernet

Report = Callable[[str, int, int], None]  # (what is measured, done, total)


@dataclass(frozen=True)
class Measurement:
    loss: float
    accuracy: float


class Meter:
    """Loss and accuracy of policies on the search images (BatchNorm re-estimated on the
    calibration images first), measured once per policy; progress goes to ``report``."""

    def __init__(self, net: "Supernet", batches: Sequence["Batch"], calibration: Sequence["Batch"],
                 report: Report | None = None):
        self.net, self.batches, self.calibration = net, batches, calibration
        self.report = report or (lambda what, done, total: None)
        self.measured: dict[Policy, Measurement] = {}

    @property
    def images(self) -> int:
        return sum(len(labels) for _, labels in self.batches)

    def measure(self, policies: Sequence[Policy], what: str = "candidates") -> dict[Policy, Measurement]:
        """Every policy's measurement; those not measured yet are measured now, with progress."""
        todo = [p for p in dict.fromkeys(policies) if p not in self.measured]
        for done, policy in enumerate(todo):
            self.report(what, done, len(todo))
            with recalibrated_bn(self.net, policy, self.calibration):
                result = evaluate(self.net, policy, self.batches)
            self.measured[policy] = Measurement(result.loss, result.accuracy)
        if todo:
            self.report(what, len(todo), len(todo))
        return {p: self.measured[p] for p in policies}


def uniform_baselines(net: "Supernet", constraints: Constraints) -> list[tuple[str, Policy]]:
    """The max policy (when it fits) and the highest uniform b/b policy meeting ``constraints``, named."""
    out = [("max", Policy.max(net))] if constraints.satisfied_by(net, Policy.max(net)) else []
    w_bits, a_bits = candidate_bits(net)
    for bits in sorted(set(w_bits) & set(a_bits), reverse=True):
        policy = Policy.uniform(net, bits)
        if constraints.satisfied_by(net, policy):
            return [(name, p) for name, p in out if p != policy] + [(f"uniform {bits}/{bits}", policy)]
    return out


def keep_best(result: "SearchResult", meter: Meter, net: "Supernet") -> "SearchResult":
    """Replace ``result.policy`` by a uniform baseline that measures a lower loss on the search images
    (ties go to the uniform policy), and record every candidate's measurement and the winner in
    ``result.details["selection"]``. Without search images nothing is measured and that is recorded."""
    if not meter.batches:
        result.details["selection"] = {"chosen": "search", "measured": False,
                                       "note": "not compared with uniform policies: no search images"}
        return result
    baselines = uniform_baselines(net, result.constraints)
    named = [(name, p) for name, p in baselines] + [("search", result.policy)]
    measured = meter.measure([p for _, p in named], "uniform baselines")
    names = {}
    for name, policy in named:  # the search's own pick keeps a uniform name when it is one
        names.setdefault(policy, name)
    ranked = sorted(dict.fromkeys(p for _, p in named), key=lambda p: (measured[p].loss, names[p] == "search"))
    proposed, chosen = result.policy, ranked[0]
    if chosen != proposed:
        result.policies = [chosen if p == proposed else p for p in result.policies]
        result.policy = chosen
    result.details["selection"] = {
        "chosen": names[chosen], "proposed": names[proposed], "measured": True, "search_images": meter.images,
        "candidates": [{"name": names[p], "loss": measured[p].loss, "accuracy": measured[p].accuracy} for p in ranked]}
    return result


def describe_selection(details: dict[str, Any]) -> str:
    """One line: which candidate won on the search images and by how much."""
    selection = details.get("selection")
    if not selection:
        return ""
    if not selection["measured"]:
        return selection["note"]
    first, *rest = selection["candidates"]
    what = "the searched mixed policy" if first["name"] == "search" else first["name"]
    line = f"{what} chosen: loss {first['loss']:.4f}, top-1 {100 * first['accuracy']:.2f}%"
    if rest:
        runner = rest[0]
        other = "the searched mixed policy" if runner["name"] == "search" else runner["name"]
        line += f" against {other}'s {runner['loss']:.4f} / {100 * runner['accuracy']:.2f}%"
    return line + f" on {selection['search_images']} search images"
