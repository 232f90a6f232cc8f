"""``calibrate``: post-training quantization of a float model, no gradient training (recipe ``ptq``).

* Weights: each layer's step for every candidate bit-width minimises the quantization error
  ||Q(w) - w||^2 over all of its weights (per output channel with ``weight_quantizer:
  lsq_channel``): a grid of clipping scales, a finer grid around the best one, then least-squares
  refinements s = <w, q> / <q, q> kept only where they lower the error.
* Activations: every layer's input is sampled in the float model on calibration images (the
  training split without augmentation, the images BatchNorm is re-estimated on); each candidate
  bit-width's step minimises the same error on the samples.
* BatchNorm keeps the float model's statistics; ``compress`` re-estimates them for every policy it
  evaluates (``evaluate.bn_images``), as for every other strategy.

The search then estimates each layer's loss change at each bit-width on the search images (ILP
objective ``sensitivity`` with ``estimate: fisher``, mpqfx/search/fisher.py) and solves the same
ILP for every budget.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from mpqfx.data.spec import batches_at, calibration_indices
from mpqfx.errors import MpqfxError
from mpqfx.quant.lsq import STEP_EPS, MultiBitLSQ, int_range, lsq_quantize
from mpqfx.quant.policy import Policy
from mpqfx.supernet import Supernet
from mpqfx.train.options import MIN_CALIBRATION_IMAGES, CalibrateOptions
from mpqfx.train.strategy import Strategy, register_strategy

Log = Callable[[str], None]
FINE_POINTS = 8  # points of the finer grid between the best coarse scale's neighbours
DENSE_WORK = 1 << 18  # small tensors get a denser grid, up to this many values x scales per bit-width
MAX_POINTS = 2048
REFINEMENTS = 2  # least-squares steps after the grids


def quantization_error(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Per row of ``x`` [G, n]: ||Q(x) - x||^2 with the quantizer the layers run (``lsq_quantize``)
    at the rows' steps ``step`` [G]."""
    return lsq_quantize(x, step[:, None], qmin, qmax, 1.0).sub_(x).square_().sum(1)


def mse_steps(x: torch.Tensor, qmin: int, qmax: int, per_channel: bool, points: int = 20) -> torch.Tensor:
    """The step minimising the squared quantization error of ``x`` to integers in [qmin, qmax]:
    one per slice ``x[c]`` with ``per_channel`` (shape [C]), else one (shape []).

    Every value counts (no subsample). Clipping scales s = r * s_max (s_max: no value clipped) are
    tried at r = 1/points .. 1 (more points for small tensors, whose error is the most jagged in s,
    up to ``DENSE_WORK`` values x points), then ``FINE_POINTS`` between the best one's neighbours,
    then least-squares refinements are kept where they lower the error.
    """
    rows = x.detach().float().reshape(x.shape[0] if per_channel else 1, -1)
    points = max(points, min(MAX_POINTS, DENSE_WORK // rows.numel()))
    top = rows.amax(1) / qmax
    if qmin < 0:
        top = torch.maximum(top, rows.amin(1) / qmin)
    top = top.clamp(min=STEP_EPS * 1e3)
    best_err = torch.full_like(top, math.inf)
    best = top.clone()

    def consider(step: torch.Tensor) -> None:
        err = quantization_error(rows, step, qmin, qmax)
        better = err < best_err
        best_err.copy_(torch.where(better, err, best_err))
        best.copy_(torch.where(better, step, best))

    for k in range(1, points + 1):
        consider(top * (k / points))
    ratio = best / top
    for k in range(FINE_POINTS + 1):
        consider(top * (ratio + (2 * k / FINE_POINTS - 1) / points).clamp(min=1 / (4 * points)))
    for _ in range(REFINEMENTS):
        q = torch.div(rows, best[:, None]).clamp_(qmin, qmax).round_()
        norm = q.square().sum(1)
        consider(torch.where(norm > 0, (rows * q).sum(1) / norm.clamp(min=1), best).clamp(min=STEP_EPS))
    return best if per_channel else best[0]


@torch.no_grad()
def fit_quantizer(quant: MultiBitLSQ, x: torch.Tensor, points: int = 20) -> None:
    """Set every candidate bit-width's step of ``quant`` to the one minimising the error on ``x``
    (per output channel when ``quant`` has one step per channel)."""
    for bits in quant.bits:
        step = mse_steps(x, *int_range(bits, quant.signed), per_channel=quant.per_channel, points=points)
        quant.step(bits).copy_(step.view(quant.step_shape))
    quant.initialized.fill_(True)


@torch.no_grad()
def input_samples(net: Supernet, batches: Sequence, per_layer: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Up to ``per_layer`` values of every quantized layer's input in the float model (bypass policy),
    drawn at random (seeded) from each batch in equal shares."""
    modules = net.layer_modules()
    share = max(1, math.ceil(per_layer / max(len(batches), 1)))
    draw = torch.Generator().manual_seed(seed)
    found: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def hook(name: str):
        def record(module, args):
            flat = args[0].detach().reshape(-1)
            picks = torch.randint(flat.numel(), (min(share, flat.numel()),), generator=draw).to(flat.device)
            found[name].append(flat[picks].float().cpu())
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        with net.use_policy(Policy.bypass(net.layers)):
            for images, _ in batches:
                net(images.to(device))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: torch.cat(values) for name, values in found.items()}


def calibration_batches(dataset, options: CalibrateOptions, batch_size: int, log: Log) -> list:
    """The calibration images (``options.images`` drawn as BatchNorm's calibration images are);
    a split with fewer than ``MIN_CALIBRATION_IMAGES`` images is an error."""
    if len(dataset) < MIN_CALIBRATION_IMAGES:
        raise MpqfxError(f"strategy.options.images: the training split has {len(dataset)} images; calibration "
                         f"needs at least {MIN_CALIBRATION_IMAGES}")
    count = min(options.images, len(dataset))
    if count < options.images:
        log(f"calibration: the training split has {len(dataset)} images, fewer than strategy.options.images "
            f"({options.images}); all of them are used")
    return batches_at(dataset, calibration_indices(dataset, count), batch_size)


@torch.no_grad()
def calibrate(net: Supernet, batches: Sequence, options: CalibrateOptions | None = None,
              log: Log | None = None) -> int:
    """Fit every weight and activation step of ``net`` (float weights, untrained quantizers) for every
    candidate bit-width; return how many calibration images were read.

    Example:
        >>> net = mpqfx.prepare(model, mpqfx.Recipe.load("ptq"), example_input=x[:1])
        >>> calibrate(net, [(x, y)])
    """
    options = options or CalibrateOptions()
    log = log or (lambda message: None)
    for module in net.layer_modules().values():
        if not isinstance(module.weight_quant, MultiBitLSQ):
            raise MpqfxError("quant.weight_quantizer: calibrate fits one step per bit-width ('lsq' or 'lsq_channel')")
        fit_quantizer(module.weight_quant, module.float_weight(), options.grid)
    samples = input_samples(net, batches, options.samples)
    for name, module in net.layer_modules().items():
        fit_quantizer(module.act_quant, samples[name], options.grid)
    images = sum(len(y) for _, y in batches)
    log(f"calibration: weight steps of {len(samples)} layers fitted to their weights, activation steps to "
        f"{min(options.samples, len(next(iter(samples.values()), ())))} input values per layer from {images} images")
    return images


def float_start_problem(warm: dict[str, Any]) -> str | None:
    """Why a ``calibrate`` run cannot start from these float weights, or None: it trains nothing, so
    random weights or a re-initialised classifier need ``warm_start.epochs`` of float training first."""
    if warm["float_epochs"]:
        return None
    if warm["source"] == "train":
        return ("warm_start.epochs: strategy 'calibrate' trains no weights and the model has no float weights; "
                "pass --checkpoint FILE or --pretrained, or --float-epochs N to train the float model first")
    if warm.get("classes") or warm.get("channels"):
        return (f"warm_start.epochs: strategy 'calibrate' trains no weights and timm adapted the given ones "
                f"({warm['note']}); pass --float-epochs N to fine-tune them first")
    return None


@register_strategy("calibrate")
class Calibrate(Strategy):
    """Post-training calibration (:func:`calibrate`); ``compress`` runs it instead of a training loop."""

    options_cls = CalibrateOptions
    trains = False  # compress calls calibrate() on calibration images, never train_step

    def __init__(self, trainer, options: CalibrateOptions):
        raise MpqfxError("strategy 'calibrate' trains nothing: run it with mpqfx.compress (recipe ptq) or call "
                         "mpqfx.train.calibrate.calibrate(net, batches)")
