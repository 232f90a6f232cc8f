"""The exact ILP behind the ``ilp`` and ``hessian`` backends: one binary per (layer, (w_bits, a_bits)),
exactly one per layer (LIMPQ Eq. 4), solved to proven optimality by PuLP's bundled CBC.

Exactness: CBC stops when no node can beat the incumbent by its cutoff increment (default
1e-5) and treats reduced costs below its tolerances (1e-7) as zero, so two policies whose
objectives differ by less than that are the same to it. The objective is therefore shifted per
layer (a constant: one pair per layer) and scaled so that the largest per-layer range is
``OBJECTIVE_SCALE``, and CBC runs with gap 0 and an increment of 1e-12: differences down to
about 1e-12 of that range are resolved (tests/search/test_ilp.py checks 1e-9 ties against
brute force). Integer preprocessing stays off: the bundled CBC 2.10.3 declared a wrong point
optimal with it (3 of 400 random instances, one by 1.25 in objective). Every constraint has
integer coefficients, so right-hand sides are floored.

Validation: CBC's answer is accepted only when every variable is 0 or 1, each layer has exactly
one pair, every constraint holds when recomputed with mpqfx's cost model (mpqfx/cost/report.py),
and the objective CBC states in its solution file agrees with the one recomputed from the
returned policy, which is the objective reported. A solve stopped by its time limit returns its best policy marked
``proven=False`` ("not proven optimal"), never as an optimum.
"""

from __future__ import annotations

import itertools
import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import pulp

from mpqfx.errors import MpqfxError
from mpqfx.graph.layer_info import LayerInfo
from mpqfx.quant.policy import Policy
from mpqfx.search.constraints import Constraints

Pair = tuple[int, int]
Coefficients = Mapping[str, Mapping[Pair, float]]

OBJECTIVE_SCALE = 1e6  # the largest per-layer coefficient range after scaling
INTEGRALITY_TOLERANCE = 1e-6  # a binary's value may differ from 0 or 1 by this much (CBC's own is 1e-7)


class SolverError(MpqfxError):
    """The ILP solver did not return a valid optimum (the message says what was wrong)."""


@dataclass
class IlpSolution:
    """A validated solution: ``objective`` is recomputed from ``policy``; ``proven`` is False when the
    time limit stopped CBC before it proved the policy optimal."""

    policy: Policy
    objective: float
    proven: bool
    seconds: float

    @property
    def status(self) -> str:
        return "optimal" if self.proven else "not proven optimal (time limit)"


def pairs(layer: LayerInfo) -> list[Pair]:
    return list(itertools.product(layer.w_bits, layer.a_bits))


def policy_objective(coefficients: Coefficients, policy: Policy) -> float:
    """The objective of ``policy``: the sum of its pairs' coefficients (correctly rounded)."""
    return math.fsum(coefficients[name][tuple(bits)] for name, bits in policy.items())


class ReadsStatedObjective:
    """A PuLP CBC command mix-in keeping the objective CBC states on its solution file's first line
    ("Optimal - objective value 12.5"): ``stated_objective``, None when the line states none."""

    stated_objective: float | None = None

    def readsol_MPS(self, filename, *args, **kwargs):
        with open(filename, encoding="utf-8") as fh:
            match = re.search(r"objective value\s+(\S+)", fh.readline())
        self.stated_objective = float(match.group(1)) if match else None
        return super().readsol_MPS(filename, *args, **kwargs)


class BundledCbc(ReadsStatedObjective, pulp.PULP_CBC_CMD):
    """PuLP's bundled CBC, keeping the objective it states."""


def cbc(time_limit: float) -> pulp.LpSolver:
    """PuLP's bundled CBC set up for exact answers (see the module docstring)."""
    return BundledCbc(msg=False, timeLimit=time_limit, gapRel=0, gapAbs=0, options=["preprocess off", "increment 1e-12"])


def solve_ilp(layers: Sequence[LayerInfo], coefficients: Coefficients, constraints: Constraints,
              fixed_bitops: float = 0.0, fixed_size_bits: float = 0.0, forced: Mapping[str, int] | None = None,
              exclude: Sequence[Policy] = (), maximize: bool = False, time_limit: float = 60.0) -> IlpSolution:
    """Optimise ``sum coefficients[l][(w, a)] * x[l, w, a]`` with one pair per layer under ``constraints``.

    ``fixed_bitops``/``fixed_size_bits`` are the parts of the totals no variable controls (float
    layers, biases, norms). ``forced`` pins a layer's weight bit-width (Alg. 2); ``exclude`` adds
    no-good cuts so that already found policies are not returned again (k-best enumeration).
    Raises SolverError when no policy meets the constraints or CBC's answer fails validation.
    """
    forced = forced or {}
    choices = {l.name: [p for p in pairs(l) if l.name not in forced or forced[l.name] == p[0]] for l in layers}
    for name, allowed in choices.items():
        if not allowed:
            raise SolverError(f"layer {name!r}: no allowed bit pair left to choose")
    shift = {name: min(coefficients[name][p] for p in allowed) for name, allowed in choices.items()}
    spread = max(coefficients[n][p] - shift[n] for n, allowed in choices.items() for p in allowed)
    scale = OBJECTIVE_SCALE / spread if spread > 0 else 1.0
    prob = pulp.LpProblem("mpqfx", pulp.LpMaximize if maximize else pulp.LpMinimize)
    x = {(l.name, p): prob.add_variable(f"x{i}_{p[0]}_{p[1]}", 0, 1, cat=pulp.LpBinary)
         for i, l in enumerate(layers) for p in choices[l.name]}
    for name, allowed in choices.items():
        prob += pulp.lpSum(x[name, p] for p in allowed) == 1  # Eq. 4a
    prob += pulp.lpSum((coefficients[n][p] - shift[n]) * scale * v for (n, p), v in x.items())  # Eq. 4
    if constraints.bitops is not None:  # Eq. 4b
        macs = {l.name: l.macs for l in layers}
        prob += pulp.lpSum(macs[n] * p[0] * p[1] * v for (n, p), v in x.items()) <= math.floor(constraints.bitops - fixed_bitops)
    if constraints.size_bits is not None:
        params = {l.name: l.params for l in layers}
        prob += pulp.lpSum(params[n] * p[0] * v for (n, p), v in x.items()) <= math.floor(constraints.size_bits - fixed_size_bits)
    if constraints.avg_bits is not None:
        total = math.floor(constraints.avg_bits * len(layers) + 1e-9)
        prob += pulp.lpSum(p[0] * v for (_, p), v in x.items()) <= total
        prob += pulp.lpSum(p[1] * v for (_, p), v in x.items()) <= total
    for policy in exclude:  # no-good cut: at least one layer differs from this policy
        chosen = [x[l.name, tuple(policy[l.name])] for l in layers if (l.name, tuple(policy[l.name])) in x]
        if len(chosen) == len(layers):
            prob += pulp.lpSum(chosen) <= len(layers) - 1
    start = time.perf_counter()
    command = cbc(time_limit)
    with warnings.catch_warnings():  # PuLP 3.x announces its 4.0 API; the bundled CBC is what 3.x ships
        warnings.simplefilter("ignore", DeprecationWarning)
        prob.solve(command)
    seconds = time.perf_counter() - start
    status = pulp.LpStatus[prob.status]
    if status != "Optimal":  # PuLP reports a time-limited solve with a solution as "Optimal" too (below)
        raise SolverError(f"ILP solver status {status!r} for {constraints.describe()} after {seconds:.2f}s")
    policy = _policy_from(layers, {key: v.value() for key, v in x.items()})
    objective = policy_objective(coefficients, policy)
    stated = getattr(command, "stated_objective", None)
    if stated is None:
        raise SolverError("the ILP solver stated no objective value in its solution file; the solution is rejected")
    scaled = math.fsum((coefficients[n][tuple(b)] - shift[n]) * scale for n, b in policy.items())
    if abs(stated - scaled) > 1e-6 * max(1.0, abs(scaled)):  # in CBC's units: it prints 8 decimals
        reported = stated / scale + math.fsum(shift.values())
        raise SolverError(f"the ILP solver reports objective {reported:.9g}, but the policy it returned scores "
                          f"{objective:.9g}; the solution is rejected")
    broken = constraints.violations(layers, policy, fixed_bitops, fixed_size_bits)
    if broken:
        raise SolverError(f"the ILP solver returned a policy that breaks {'; '.join(broken)}; the solution is rejected")
    return IlpSolution(policy, objective, prob.sol_status == pulp.LpSolutionOptimal, seconds)


def _policy_from(layers: Sequence[LayerInfo], values: Mapping[tuple[str, Pair], float | None]) -> Policy:
    """The policy the 0/1 values select; SolverError on a value that is not binary or a layer
    without exactly one pair."""
    chosen: dict[str, list[Pair]] = {l.name: [] for l in layers}
    for (name, pair), value in values.items():
        value = 0.0 if value is None else value
        if abs(value - round(value)) > INTEGRALITY_TOLERANCE or round(value) not in (0, 1):
            raise SolverError(f"the ILP solver returned a non-binary value {value:g} for layer {name!r} at "
                              f"w{pair[0]}/a{pair[1]} (every choice must be 0 or 1); the solution is rejected")
        if round(value) == 1:
            chosen[name].append(pair)
    for name, picked in chosen.items():
        if len(picked) != 1:
            raise SolverError(f"the ILP solver chose {len(picked)} bit pairs for layer {name!r} (exactly one "
                              "is allowed); the solution is rejected")
    return Policy({name: picked[0] for name, picked in chosen.items()})
