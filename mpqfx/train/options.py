"""Options of the shipped training strategies (``strategy.options`` in a recipe).

Plain frozen dataclasses, kept apart from the strategies so that checking a recipe imports no
training code. ``problems()`` lists out-of-range fields; ``recipe_problems(recipe)`` what the
strategy needs from the rest of the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpqfx.recipe import BnMode, Recipe, WeightQuantizer


@dataclass(frozen=True)
class NoOptions:
    """Options of a strategy that has none."""


@dataclass(frozen=True)
class OneShotOptions:
    samples: int = 3  # K policies drawn per step, besides the max policy
    scheduler: bool = True
    schedule_every: int = 100  # M: steps between profilings of the unstable-weight criterion
    freeze_ratio: float = 0.25  # 𝒦 at the start, as a fraction of the searchable layers
    unstable_eps: float = 0.25  # ε of Eq. 6
    idm: bool = True
    idm_weight: float = 1e-2  # θ
    idm_floor: float = 0.0  # Q of Eq. 8
    fairness: bool = True
    qe_weight: float = 0.5  # κ
    qe_start: float = 0.25  # fraction of training before the QE loss starts
    uniform_share: float = 0.0  # probability that a sampled policy is uniform instead of per-layer
    sandwich: bool = False  # also train the min policy every step

    def problems(self) -> list[str]:
        found = []
        if self.samples < 1:
            found.append(f"samples: K must be >= 1, got {self.samples}")
        if self.schedule_every < 1:
            found.append(f"schedule_every: must be >= 1, got {self.schedule_every}")
        for name in ("freeze_ratio", "unstable_eps", "qe_start", "uniform_share"):
            if not 0 <= getattr(self, name) <= 1:
                found.append(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        for name in ("idm_weight", "qe_weight"):
            if getattr(self, name) < 0:
                found.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        return found


@dataclass(frozen=True)
class LimpqOptions:
    random_policies: int = 1  # random per-layer policies per step, after the uniform ones

    def problems(self) -> list[str]:
        return [] if self.random_policies >= 0 else [f"random_policies: must be >= 0, got {self.random_policies}"]

    def recipe_problems(self, recipe: Recipe) -> list[str]:
        if recipe.quant.weight_quantizer is not WeightQuantizer.LSQ:
            return ["quant.weight_quantizer: limpq learns one step per bit-width as its indicator; it needs 'lsq'"]
        return []


@dataclass(frozen=True)
class BitMixerOptions:
    stages: tuple[float, float, float] = (0.2, 0.3, 0.5)  # fractions of training for stages I, II, III
    k: float = 0.75  # final probability of layer-wise random bit-widths

    def problems(self) -> list[str]:
        found = []
        if len(self.stages) != 3 or any(s < 0 for s in self.stages):
            found.append(f"stages: expected three fractions >= 0, got {list(self.stages)}")
        elif abs(sum(self.stages) - 1) > 1e-6:
            found.append(f"stages: {list(self.stages)} must add up to 1 (they add up to {sum(self.stages):g})")
        if not 0 < self.k <= 1:
            found.append(f"k: must be in (0, 1], got {self.k}")
        return found

    def recipe_problems(self, recipe: Recipe) -> list[str]:
        if recipe.quant.bn is not BnMode.TRANSITIONAL:
            return ["quant.bn: bitmixer needs 'transitional' BatchNorm (Bit-Mixer §3.2)"]
        return []


@dataclass(frozen=True)
class DoubleRoundingOptions:
    multi_precision: float = 0.5  # fraction of training in the multi-precision stage (Alg. A.2)
    alrs: bool = True
    hasb: bool = True
    sigma: float = 1.0  # final bit-switching threshold of Alg. A.3
    hessian_samples: int = 8  # Hutchinson probes per batch
    hessian_images: int = 1024  # training images for the Hessian traces (the paper uses ~1000)

    def problems(self) -> list[str]:
        found = []
        for name in ("multi_precision", "sigma"):
            if not 0 <= getattr(self, name) <= 1:
                found.append(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        for name in ("hessian_samples", "hessian_images"):
            if getattr(self, name) < 1:
                found.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        return found

    def recipe_problems(self, recipe: Recipe) -> list[str]:
        if recipe.quant.weight_quantizer is not WeightQuantizer.DOUBLE_ROUNDING:
            return ["quant.weight_quantizer: the double_rounding strategy needs 'double_rounding'"]
        return []


MIN_CALIBRATION_IMAGES = 32  # fewer leave the activation and BatchNorm statistics of a layer to a batch or two


@dataclass(frozen=True)
class CalibrateOptions:
    images: int = 1024  # calibration images (training split, no augmentation) the activation steps are fitted on
    samples: int = 16384  # input values per layer kept for each layer's activation fit
    grid: int = 20  # clipping scales tried per bit-width before the finer grid and least squares

    def problems(self) -> list[str]:
        found = []
        if self.images < MIN_CALIBRATION_IMAGES:
            found.append(f"images: must be >= {MIN_CALIBRATION_IMAGES}, got {self.images}")
        if self.samples < 1024:
            found.append(f"samples: must be >= 1024, got {self.samples}")
        if self.grid < 4:
            found.append(f"grid: must be >= 4, got {self.grid}")
        return found

    def recipe_problems(self, recipe: Recipe) -> list[str]:
        if recipe.quant.weight_quantizer is WeightQuantizer.DOUBLE_ROUNDING:
            return ["quant.weight_quantizer: calibrate fits one step per bit-width; it needs 'lsq' or 'lsq_channel'"]
        return []
