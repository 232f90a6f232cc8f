"""Options of the shipped search backends (``search.options`` in a recipe, ``--option`` on the CLI).

Plain frozen dataclasses, kept apart from the backends so that checking a recipe imports no
search code; ``problems()`` lists out-of-range fields.
"""

from __future__ import annotations

from dataclasses import dataclass

OBJECTIVES = ("limpq", "hessian", "sensitivity", "costs")
ESTIMATES = ("measured", "fisher")  # objective sensitivity: measured loss changes, or their Fisher estimate
DATA_OBJECTIVES = ("hessian", "sensitivity")  # evaluate the supernet on data (hessian: unless traces are given)


@dataclass(frozen=True)
class NoSearchOptions:
    """Options of a backend that has none."""


@dataclass(frozen=True)
class IlpOptions:
    objective: str = "limpq"  # limpq: LIMPQ Eq. 4; hessian: Double Rounding Alg. 2; sensitivity: measured; costs: user-given
    alpha: float = 1.0  # LIMPQ Eq. 4: weight of the weight indicators against the activation ones
    estimate: str = "measured"  # objective sensitivity: "measured" loss changes or "fisher" (one gradient pass)
    pareto: bool = False
    pareto_points: int = 8  # budgets in the sweep from the smallest reachable value to the target
    alg2_variants: bool = False  # also pin each layer to each lower bit (Alg. 2 lines 5-16)
    floors: bool = False  # also solve with bits floored at each candidate; return the lowest measured loss
    split_floors: bool = False  # with floors (ignored without): floor weights and activations separately
    time_limit: float = 60.0

    @property
    def verifies(self) -> bool:
        """Whether the floored optima are evaluated on data (``floors``; a Pareto sweep returns its front instead)."""
        return self.floors and not self.pareto

    def problems(self) -> list[str]:
        found = []
        if self.objective not in OBJECTIVES:
            found.append(f"objective: {self.objective!r} is not allowed; expected one of {', '.join(OBJECTIVES)}")
        if self.estimate not in ESTIMATES:
            found.append(f"estimate: {self.estimate!r} is not allowed; expected one of {', '.join(ESTIMATES)}")
        if self.alpha < 0:
            found.append(f"alpha: must be >= 0, got {self.alpha}")
        if self.pareto_points < 2:
            found.append(f"pareto_points: must be >= 2, got {self.pareto_points}")
        if not self.time_limit > 0:
            found.append(f"time_limit: must be > 0, got {self.time_limit}")
        return found


@dataclass(frozen=True)
class GreedyOptions:
    lam: float = 1.5  # lambda of Eq. 9 (RFQ's supplementary uses 1.5)
    start: str = "max"  # "max" or "uniform:<bits>"
    reuse_activations: bool = True  # recompute only downstream of the changed layer
    recalibrate_batches: int = 0  # re-estimate BN per candidate on this many training batches
    max_iterations: int = 0  # 0: twice the number of one-bit steps from max to min

    def problems(self) -> list[str]:
        found = []
        if self.lam < 0:
            found.append(f"lam: must be >= 0, got {self.lam}")
        if self.start != "max" and not self.start.startswith("uniform:"):
            found.append(f"start: expected 'max' or 'uniform:<bits>', got {self.start!r}")
        if self.recalibrate_batches < 0 or self.max_iterations < 0:
            found.append("recalibrate_batches and max_iterations: must be >= 0")
        return found


@dataclass(frozen=True)
class HessianOptions:
    top_k: int = 5
    power_iters: int = 20
    tol: float = 1e-3
    recalibrate_batches: int = 0  # re-estimate BN on this many training batches before each evaluation

    def problems(self) -> list[str]:
        found = []
        if self.top_k < 1:
            found.append(f"top_k: must be >= 1, got {self.top_k}")
        if self.power_iters < 1:
            found.append(f"power_iters: must be >= 1, got {self.power_iters}")
        return found
