"""Recipes: frozen, validated configuration of how a model is quantized, trained and searched.

A recipe is YAML on disk (``recipes/*.yaml`` ship with mpqfx) and a frozen dataclass in Python.
A recipe may extend another (``base: oneshot``, a shipped name or a YAML path, plus only the keys
it changes; mappings merge deeply); loading resolves it, so a saved recipe is always whole.
Loading gathers every problem into one :class:`~mpqfx.errors.RecipeError`.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpqfx.config import check_all, from_mapping, short_repr, to_mapping
from mpqfx.errors import RecipeError, closest, did_you_mean
from mpqfx.registry import SEARCHES, STRATEGIES, Registry

MIN_BITS, MAX_BITS = 1, 8
DEFAULT_RECIPE = "oneshot"  # the layer rules of prepare(), `mpqfx search --model` and `mpqfx bitops`; "default" loads it
COMPRESS_RECIPE = "quickstart"  # what compress() and `mpqfx compress` train with unless told: a few-minute CPU run


class BnMode(str, enum.Enum):
    """How BatchNorms after quantized convs are specialised per bit-width."""

    TRANSITIONAL = "transitional"  # one set per (previous layer bits, this layer bits), Bit-Mixer §3.2
    SWITCHABLE = "switchable"  # one set per (w_bits, a_bits) of the conv itself
    SHARED = "shared"  # the original BN, shared by every bit-width


class WeightQuantizer(str, enum.Enum):
    """How weights are quantized at each candidate bit-width."""

    LSQ = "lsq"  # one learnable LSQ step per bit-width
    LSQ_CHANNEL = "lsq_channel"  # one learnable LSQ step per bit-width and output channel
    DOUBLE_ROUNDING = "double_rounding"  # one stored highest-bit scale, lower bits derived (Double Rounding §3.1)


def _bits_problems(name: str, bits: tuple[int, ...] | None, allow_none: bool = False) -> list[str]:
    if bits is None:
        return [] if allow_none else [f"{name}: must be a list of bit-widths"]
    if len(bits) == 0:
        return [f"{name}: must not be empty (allowed bit-widths: {MIN_BITS}..{MAX_BITS})"]
    bad = [b for b in bits if not MIN_BITS <= b <= MAX_BITS]
    if bad:
        return [f"{name}: bit-widths {bad} out of range (allowed: {MIN_BITS}..{MAX_BITS})"]
    if len(set(bits)) != len(bits):
        return [f"{name}: repeated bit-widths in {list(bits)}"]
    return []


@dataclass(frozen=True)
class BitOverride:
    """Bit candidates for the layers whose qualified name matches ``pattern`` (fnmatch syntax)."""

    pattern: str
    w_bits: tuple[int, ...] | None = None
    a_bits: tuple[int, ...] | None = None

    def problems(self) -> list[str]:
        found = _bits_problems("w_bits", self.w_bits, True) + _bits_problems("a_bits", self.a_bits, True)
        if not self.pattern:
            found.append("pattern: must not be empty")
        if self.w_bits is None and self.a_bits is None:
            found.append("needs w_bits or a_bits")
        return found


@dataclass(frozen=True)
class QuantConfig:
    """Bit candidates and the layer rules applied to them."""

    w_bits: tuple[int, ...] = (2, 3, 4, 5, 6)
    a_bits: tuple[int, ...] = (2, 3, 4, 5, 6)
    first_last_bits: int | None = 8  # None: first/last layers search like the others
    depthwise_exclude: tuple[int, ...] = (2,)
    overrides: tuple[BitOverride, ...] = ()
    bn: BnMode = BnMode.TRANSITIONAL
    weight_quantizer: WeightQuantizer = WeightQuantizer.LSQ

    def problems(self) -> list[str]:
        found = _bits_problems("w_bits", self.w_bits) + _bits_problems("a_bits", self.a_bits)
        if self.first_last_bits is not None and not MIN_BITS <= self.first_last_bits <= MAX_BITS:
            found.append(f"first_last_bits: {self.first_last_bits} out of range (allowed: {MIN_BITS}..{MAX_BITS} or null)")
        if set(self.w_bits) <= set(self.depthwise_exclude):
            found.append("depthwise_exclude: removes every weight bit-width of depthwise convs")
        return found


@dataclass(frozen=True)
class GraphConfig:
    """How the model is traced: extra leaf modules, forward arguments kept as inputs, the example input shape."""

    leaf_modules: tuple[str, ...] = ()  # qualified-name patterns or class names kept opaque
    input_size: tuple[int, ...] | None = None  # (C, H, W); default: the model's timm pretrained_cfg
    traced_args: tuple[str, ...] = ()  # defaulted forward() arguments traced as graph inputs (others: pinned)

    def problems(self) -> list[str]:
        if self.input_size is not None and (len(self.input_size) != 3 or min(self.input_size) < 1):
            return [f"input_size: expected [C, H, W] of positive ints, got {list(self.input_size)}"]
        return []


class ClipMode(str, enum.Enum):
    VALUE = "value"  # clamp every gradient element to [-grad_clip, grad_clip] (RFQ's choice)
    NORM = "norm"  # rescale so that the global gradient norm is at most grad_clip


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lamb", "lion", "rmsprop")
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "none")


@dataclass(frozen=True)
class DistillConfig:
    """Distillation for sampled policies: CE on labels mixed with KL to a teacher's output."""

    inplace: bool = True  # teacher = the max-bit policy's detached output in the same step
    teacher: bool = False  # teacher = the float model (when the caller provides one)
    ce_weight: float = 0.5
    kl_weight: float = 0.5
    temperature: float = 1.0

    def problems(self) -> list[str]:
        found = [f"{n}: must be >= 0, got {v}" for n, v in (("ce_weight", self.ce_weight), ("kl_weight", self.kl_weight)) if v < 0]
        if self.ce_weight == 0 and self.kl_weight == 0:
            found.append("ce_weight and kl_weight: at least one must be > 0")
        if self.temperature <= 0:
            found.append(f"temperature: must be > 0, got {self.temperature}")
        return found


@dataclass(frozen=True)
class TrainConfig:
    """The shared training loop: timm optimizer and scheduler for the latent weights, Adam for steps."""

    epochs: int = 1
    batch_size: int = 64
    optimizer: str = "sgd"  # a timm create_optimizer_v2 name
    lr: float = 0.04
    momentum: float = 0.9
    weight_decay: float = 2.5e-5
    sched: str = "cosine"  # a timm scheduler name
    warmup_epochs: int = 0
    min_lr: float = 1e-6
    quant_lr: float = 1e-5  # Adam, no weight decay, for every quantizer step
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0
    grad_clip_mode: ClipMode = ClipMode.VALUE
    ema_decay: float | None = None
    amp: bool = True  # bfloat16 autocast on CUDA devices that support it
    channels_last: bool = True  # train in NHWC layout (timm's --channels-last): faster convs on CPU and GPU
    distill: DistillConfig = field(default_factory=DistillConfig)
    checkpoint_every: int = 0  # steps between checkpoints; 0: at epoch ends and the end only
    log_every: int = 10
    seed: int = 0
    workers: int = 0
    max_steps: int | None = None  # stop early (all schedules still span `epochs`)

    def problems(self) -> list[str]:
        found = []
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                found.append(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                found.append(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("quant_lr", "weight_decay", "min_lr", "warmup_epochs", "checkpoint_every", "workers"):
            if getattr(self, name) < 0:
                found.append(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            found.append(f"momentum: must be in [0, 1), got {self.momentum}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("sched", SCHEDULERS)):
            value = getattr(self, name)
            if value not in allowed:
                found.append(f"{name}: {value!r} is not allowed{did_you_mean(value, allowed)}; "
                             f"expected one of {', '.join(allowed)}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            found.append(f"warmup_epochs: {self.warmup_epochs} must be < epochs ({self.epochs})")
        if not 0 <= self.label_smoothing < 1:
            found.append(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            found.append(f"grad_clip: must be > 0 or null, got {self.grad_clip}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            found.append(f"ema_decay: must be in (0, 1) or null, got {self.ema_decay}")
        if self.max_steps is not None and self.max_steps < 1:
            found.append(f"max_steps: must be >= 1 or null, got {self.max_steps}")
        return found


@dataclass(frozen=True)
class StrategySpec:
    """The training strategy by registered name, with that strategy's typed options."""

    name: str = "oneshot"
    options: Any = None  # a mapping in YAML; the strategy's options dataclass once resolved


@dataclass(frozen=True)
class EvalConfig:
    """How policies are evaluated after search and during data-driven search."""

    bn_images: int = 1024  # training images to re-estimate BatchNorm statistics before each evaluation (0: off)
    batch_size: int = 128
    search_images: int = 512  # the fixed set of training images data-driven search backends score on
    uniform_bits: tuple[int, ...] = (8, 4, 3)  # uniform policies reported next to the searched ones

    def problems(self) -> list[str]:
        found = [f"{n}: must be >= 0, got {getattr(self, n)}" for n in ("bn_images", "search_images") if getattr(self, n) < 0]
        found += [f"uniform_bits: {b} is not a bit-width in 1..8" for b in self.uniform_bits if not 1 <= b <= 8]
        if self.batch_size < 1:
            found.append(f"batch_size: must be >= 1, got {self.batch_size}")
        return found


@dataclass(frozen=True)
class WarmStartConfig:
    """Float training of the original model before the supernet: from random weights when
    ``compress`` is given neither pretrained nor local weights, or a fine-tune after timm
    re-initialised their classifier (or adapted their input conv) for the data; weights that fit
    get none. Other settings (batch size, optimizer, seed...) come from ``train``."""

    epochs: int = 1
    lr: float = 0.05

    def problems(self) -> list[str]:
        found = [] if self.epochs >= 0 else [f"epochs: must be >= 0, got {self.epochs}"]
        return found + ([] if self.lr > 0 else [f"lr: must be > 0, got {self.lr}"])


@dataclass(frozen=True)
class DataConfig:
    """How much of the data set a run uses and the Fashion-MNIST input size."""

    train_images: int | None = None  # N training images, a seeded class-stratified sample; null: all
    val_images: int | None = None  # N held-out images, a seeded class-stratified sample; null: all
    image_size: int = 32  # square input side for Fashion-MNIST (ImageFolder uses the model's config)
    skip_bad_images: bool = False  # leave out ImageFolder files that do not decode (counted in the report)

    def problems(self) -> list[str]:
        found = [f"{n}: must be >= 1 or null, got {getattr(self, n)}" for n in ("train_images", "val_images")
                 if getattr(self, n) is not None and getattr(self, n) < 1]
        return found + ([] if self.image_size >= 8 else [f"image_size: must be >= 8, got {self.image_size}"])


@dataclass(frozen=True)
class SearchSpec:
    """The default search backend by registered name, with that backend's typed options."""

    backend: str = "ilp"
    options: Any = None  # a mapping in YAML; the backend's options dataclass once resolved


@dataclass(frozen=True)
class Recipe:
    """Everything mpqfx needs to know about how to compress a model.

    Example:
        >>> from mpqfx import Recipe
        >>> r = Recipe.load("default")
        >>> r.quant.w_bits
        (2, 3, 4, 5, 6)
    """

    name: str = "custom"
    description: str = ""
    quant: QuantConfig = field(default_factory=QuantConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    strategy: StrategySpec = field(default_factory=StrategySpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchSpec = field(default_factory=SearchSpec)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    data: DataConfig = field(default_factory=DataConfig)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe", folder: Path | None = None) -> "Recipe":
        """Build and validate a recipe from plain data, merged over its ``base`` recipe if it names one
        (a relative ``base`` path is read from ``folder``); raise RecipeError listing every problem."""
        problems: list[str] = []
        data = _with_base(data, folder, problems)
        recipe = from_mapping(cls, data, "", problems)
        if recipe is not None:
            recipe = recipe._resolve_strategy(problems)
            problems += check_all(recipe)
        if problems:
            raise RecipeError(problems, source)
        return recipe

    def _resolve_strategy(self, problems: list[str]) -> "Recipe":
        """Convert the strategy's and the search backend's options to their typed dataclasses."""
        resolved = self
        strategy = _resolve_options(self.strategy.name, self.strategy.options, STRATEGIES, "strategy.name",
                                    "strategy.options", problems)
        if strategy is not None:
            resolved = dataclasses.replace(resolved, strategy=StrategySpec(self.strategy.name, strategy))
            check = getattr(strategy, "recipe_problems", None)  # cross-field needs, e.g. a weight quantizer
            problems += check(resolved) if check is not None else []
        search = _resolve_options(self.search.backend, self.search.options, SEARCHES, "search.backend",
                                  "search.options", problems)
        if search is not None:
            resolved = dataclasses.replace(resolved, search=SearchSpec(self.search.backend, search))
        return resolved

    @classmethod
    def from_yaml(cls, text: str, source: str = "recipe", folder: Path | None = None) -> "Recipe":
        problems: list[str] = []
        data = _parse_yaml(text, problems)
        if problems:
            raise RecipeError(problems, source)
        return cls.from_dict(data, source, folder)

    @classmethod
    def load(cls, name_or_path: "str | Path | Recipe") -> "Recipe":
        """A shipped recipe by name (``mpqfx recipes`` lists them; "default" is oneshot) or a YAML file by path."""
        if isinstance(name_or_path, Recipe):
            return name_or_path
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") or path.exists():
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                match = closest(path.stem, shipped_recipes()) if not path.exists() else None
                hint = f" (a shipped recipe is named {match!r}: pass the name without .yaml)" if match else ""
                raise RecipeError([f"cannot read: {exc.strerror}{hint}"], str(path)) from None
            except UnicodeDecodeError as exc:
                raise RecipeError([f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})"],
                                  str(path)) from None
            return cls.from_yaml(text, str(path), path.parent)
        shipped = shipped_recipes()
        if str(name_or_path) == "default":
            name_or_path = DEFAULT_RECIPE
        if str(name_or_path) not in shipped:
            match = closest(str(name_or_path), [*shipped, "default"])
            hint = f", did you mean {match!r}?" if match else ""
            raise RecipeError(
                [f"no shipped recipe named {str(name_or_path)!r}{hint} (shipped: {', '.join(sorted(shipped))}; "
                 f"'default' is {DEFAULT_RECIPE}); or pass a path to a .yaml file"], "recipe")
        return cls.from_yaml(shipped[str(name_or_path)], f"recipe {name_or_path!r}")

    def check(self) -> "Recipe":
        """Validate a recipe built in Python exactly as a YAML one (types, ranges, strategy options);
        return it with enums and options resolved, or raise RecipeError listing every problem."""
        return Recipe.from_dict(self.to_dict(), f"recipe {self.name!r}")

    # -- saving ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with top-level fields replaced (``dataclasses.replace``), validated."""
        return dataclasses.replace(self, **changes).check()


def _resolve_options(name: str, options: Any, registry: Registry, name_path: str, options_path: str,
                     problems: list[str]) -> Any:
    """The registered entry's options dataclass built from ``options``, or None with a problem noted.
    Only the options' module is imported, not the strategy's or backend's own."""
    if name not in registry:
        problems.append(f"{name_path}: unknown {registry.kind} {name!r}{did_you_mean(name, registry.names())}; "
                        f"registered: {', '.join(registry.names())}")
        return None
    options_cls = registry.options_cls(name)
    if dataclasses.is_dataclass(options):
        if not isinstance(options, options_cls):
            problems.append(f"{options_path}: expected {options_cls.__name__} for {registry.kind} {name!r}")
            return None
        return options
    return from_mapping(options_cls, options, options_path, problems) or options_cls()


def _parse_yaml(text: str, problems: list[str], what: str = "") -> Any:
    try:
        return yaml.safe_load(text)
    # ValueError: an int over 4300 digits or a date like 2001-02-30; RecursionError: deep nesting
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        problems.append(f"{what}not valid YAML: {' '.join(str(exc).split())}")
        return None


_SWITCHES = {"strategy": "name", "search": "backend"}  # another name: its options start afresh


def _merge(base: dict[str, Any], changes: dict[str, Any], top: bool = True) -> dict[str, Any]:
    """``changes`` deep-merged over ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in changes.items():
        old = out.get(key)
        switched = (top and key in _SWITCHES and isinstance(value, dict) and isinstance(old, dict)
                    and value.get(_SWITCHES[key], old.get(_SWITCHES[key])) != old.get(_SWITCHES[key]))
        out[key] = _merge(old, value, False) if isinstance(old, dict) and isinstance(value, dict) and not switched else value
    return out


def _with_base(data: Any, folder: Path | None, problems: list[str], seen: tuple[str, ...] = ()) -> Any:
    """``data`` merged over the recipe its ``base`` names (recursively); name and description are
    never inherited."""
    if not isinstance(data, dict) or "base" not in data:
        return data
    changes = {k: v for k, v in data.items() if k != "base"}
    base = data["base"]
    if not isinstance(base, str) or not base:
        problems.append(f"base: expected a shipped recipe name or a YAML path, got {short_repr(base)}")
        return changes
    shipped = shipped_recipes()
    if base.endswith((".yaml", ".yml")) or "/" in base:
        path = Path(base) if folder is None else folder / base
        key, where = str(path.resolve()), path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"base: cannot read {base!r} ({getattr(exc, 'strerror', None) or 'not UTF-8 text'})")
            return changes
    else:
        key, where = DEFAULT_RECIPE if base == "default" else base, None
        if key not in shipped:
            problems.append(f"base: no shipped recipe named {base!r}{did_you_mean(base, shipped)} (shipped: "
                            f"{', '.join(sorted(shipped))}), or a path to a .yaml file")
            return changes
        text = shipped[key]
    if key in seen:
        problems.append(f"base: {' -> '.join((*seen, key))} goes round in a circle")
        return changes
    parent = _with_base(_parse_yaml(text, problems, f"base {base!r}: "), where, problems, (*seen, key))
    if not isinstance(parent, dict):
        problems.append(f"base: {base!r} is not a recipe (expected a mapping)")
        return changes
    return _merge({k: v for k, v in parent.items() if k not in ("name", "description")}, changes)


def shipped_recipes() -> dict[str, str]:
    """YAML text of every recipe shipped in ``mpqfx.recipes``, keyed by name."""
    root = importlib.resources.files("mpqfx.recipes")
    return {p.name.rsplit(".", 1)[0]: p.read_text(encoding="utf-8")
            for p in root.iterdir() if p.name.endswith(".yaml")}
