"""The fine-tuning loop of one policy in its deployed form: checkpoints that resume exactly after a kill.

The latent weights, biases and BatchNorm parameters train with the recipe's optimizer (timm's),
the LSQ steps with Adam, both on one cosine schedule over the fine-tune. The BatchNorm statistics
are re-estimated and frozen after a warm-up of ``BN_WARMUP`` of the steps; the 8-bit quantizers
between layers are calibrated again at every epoch end (what a checkpoint holds is what resumes).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mpqfx.errors import MpqfxError
from mpqfx.finetune.model import FoldedModel, TrainedQuantizer
from mpqfx.recipe import Recipe
from mpqfx.train.checkpoint import (CheckpointError, fingerprint, load_latest_checkpoint, mismatch, previous_path,
                                    recipe_differences, rng_state, save_checkpoint, set_rng_state)
from mpqfx.train.losses import task_loss
from mpqfx.train.metrics import MetricsLog, progress_bar
from mpqfx.train.sampler import EpochSampler

Batch = tuple[torch.Tensor, torch.Tensor]
BN_WARMUP = 0.25  # share of the steps that normalize with batch statistics before they are frozen
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class FinetuneSettings:
    """What a fine-tune trains with; a checkpoint resumes only with the same settings."""

    epochs: int
    lr: float
    quant_lr: float
    batch_size: int
    optimizer: str
    momentum: float
    weight_decay: float
    label_smoothing: float
    grad_clip: float | None
    checkpoint_every: int
    log_every: int
    seed: int

    @classmethod
    def from_recipe(cls, recipe: Recipe, epochs: int, lr: float | None) -> "FinetuneSettings":
        """The recipe's training settings; ``lr`` (default: a tenth of ``train.lr``) scales the
        quantizer steps' Adam rate, ``train.quant_lr``, by the same factor."""
        if epochs < 1:
            raise MpqfxError(f"--epochs: must be at least 1, got {epochs}")
        if lr is not None and not lr > 0:
            raise MpqfxError(f"--lr: must be > 0, got {lr}")
        train = recipe.train
        lr = train.lr / 10 if lr is None else float(lr)
        return cls(epochs=epochs, lr=lr, quant_lr=train.quant_lr * lr / train.lr, batch_size=train.batch_size,
                   optimizer=train.optimizer, momentum=train.momentum, weight_decay=train.weight_decay,
                   label_smoothing=train.label_smoothing, grad_clip=train.grad_clip,
                   checkpoint_every=train.checkpoint_every, log_every=train.log_every, seed=train.seed)


def _step_parameters(model: FoldedModel) -> list[nn.Parameter]:
    """The learned LSQ steps: weight steps and b-bit input steps."""
    out = [layer.weight_step for _, layer in model.folded_layers() if layer.weight_step.requires_grad]
    out += [m.step for m in model.graph.modules() if isinstance(m, TrainedQuantizer) and isinstance(m.step, nn.Parameter)]
    return list({id(p): p for p in out}.values())


class FinetuneLoop:
    """Trains ``model`` on ``dataset`` (``fit``); ``folder`` holds its checkpoints and metrics."""

    def __init__(self, model: FoldedModel, dataset: Dataset, calibration: Sequence[Batch], settings: FinetuneSettings,
                 folder: Path, device: torch.device, progress: bool = False, log: Callable[[str], None] | None = None):
        self.model, self.dataset, self.calibration, self.settings = model, dataset, calibration, settings
        self.device, self.progress, self.log = device, progress, log or (lambda message: None)
        self.checkpoint = folder / CHECKPOINT_NAME
        self.metrics = MetricsLog(folder / METRICS_NAME)
        self.sampler = EpochSampler(len(dataset), settings.seed)
        self.steps_per_epoch = len(dataset) // settings.batch_size
        if self.steps_per_epoch == 0:
            raise MpqfxError(f"train.batch_size {settings.batch_size} is more than the {len(dataset)} training images")
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.freeze_step = int(self.total_steps * BN_WARMUP)
        self.step = self.epoch = self.step_in_epoch = 0
        steps = _step_parameters(model)
        ids = {id(p) for p in steps}
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": [p for p in weights if p.ndim > 1], "weight_decay": settings.weight_decay},
                  {"params": [p for p in weights if p.ndim <= 1], "weight_decay": 0.0}]
        self.optimizer = create_optimizer_v2([g for g in groups if g["params"]], opt=settings.optimizer,
                                             lr=settings.lr, weight_decay=settings.weight_decay,
                                             momentum=settings.momentum)
        self.quant_optimizer = create_optimizer_v2(steps, opt="adam", lr=settings.quant_lr, weight_decay=0.0)

    def _set_lr(self) -> float:
        factor = 0.5 * (1 + math.cos(math.pi * self.step / self.total_steps))  # cosine to zero
        for optimizer, base in ((self.optimizer, self.settings.lr), (self.quant_optimizer, self.settings.quant_lr)):
            for group in optimizer.param_groups:
                group["lr"] = base * factor
        return self.settings.lr * factor

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "quant_optimizer": self.quant_optimizer.state_dict(), "rng": rng_state(), "step": self.step,
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "total_steps": self.total_steps,
                "settings": asdict(self.settings), "fingerprint": fingerprint(self.model.state_dict())}

    def _save(self) -> None:
        save_checkpoint(self.checkpoint, self.state_dict(), keep_previous=True)

    def _load(self) -> None:
        state, passed_over = load_latest_checkpoint(self.checkpoint, map_location=self.device)
        source = previous_path(self.checkpoint) if passed_over else self.checkpoint
        if passed_over:
            self.log(f"{passed_over}; resuming from the checkpoint before it ({source.name})")
        changed = recipe_differences(asdict(self.settings), state["settings"])
        if changed:
            raise CheckpointError(f"checkpoint {str(source)!r} was written with other settings "
                                  f"({', '.join(changed)}); resume with the same --epochs and --lr")
        problem = mismatch(fingerprint(self.model.state_dict()), state["fingerprint"], "model tensors")
        if problem:
            raise CheckpointError(f"checkpoint {str(source)!r} belongs to another model or policy: {problem}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.quant_optimizer.load_state_dict(state["quant_optimizer"])
        set_rng_state(state["rng"])
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        self.metrics.truncate_after(self.step)
        self.log(f"resuming from {source.name} at step {self.step} of {self.total_steps}")

    def fit(self, resume: bool = False, stop_after: int | None = None) -> None:
        """Train to the end (``stop_after`` steps at most, for interruption tests); every BatchNorm is
        frozen and every 8-bit quantizer calibrated when it returns at the end."""
        if resume and (self.checkpoint.is_file() or previous_path(self.checkpoint).is_file()):
            self._load()
        else:
            self.metrics.truncate_after(0)
            random.seed(self.settings.seed)
            np.random.seed(self.settings.seed)
            torch.manual_seed(self.settings.seed)
        with progress_bar(self.progress) as bar:
            while self.step < self.total_steps:
                if stop_after is not None and self.step >= stop_after:
                    return
                self._epoch(bar, stop_after)
        if not self.model.frozen:
            self.model.freeze_batchnorm(self.calibration)
        self.model.recalibrate(self.calibration)
        self.model.eval()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimization step of the model on a batch, at the learning rates set; the loss."""
        settings = self.settings
        self.model.train()
        logits = self.model(images.to(self.device))
        loss = task_loss(logits, labels.to(self.device), settings.label_smoothing)
        loss.backward()
        if settings.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], settings.grad_clip)
        self.optimizer.step()
        self.quant_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.quant_optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _epoch(self, bar, stop_after: int | None) -> None:
        settings = self.settings
        self.sampler.set_epoch(self.epoch, self.step_in_epoch * settings.batch_size)
        loader = DataLoader(self.dataset, batch_size=settings.batch_size, sampler=self.sampler, drop_last=True,
                            generator=torch.Generator().manual_seed(settings.seed * 1000 + self.epoch))
        task = bar.add_task(f"fine-tune epoch {self.epoch + 1}/{settings.epochs}", total=self.steps_per_epoch,
                            completed=self.step_in_epoch, loss=float("nan"), lr=settings.lr, ips=0.0)
        for images, labels in loader:
            if self.step >= self.freeze_step and not self.model.frozen:
                self.model.freeze_batchnorm(self.calibration)
                self.log(f"BatchNorm statistics frozen at step {self.step}")
            tick = time.perf_counter()
            lr = self._set_lr()
            value = self.train_step(images, labels)
            self.step += 1
            self.step_in_epoch += 1
            ips = images.shape[0] / max(time.perf_counter() - tick, 1e-9)
            bar.update(task, advance=1, loss=value, lr=lr, ips=ips)
            if self.step % settings.log_every == 0 or self.step == self.total_steps:
                self.metrics.append({"step": self.step, "epoch": self.epoch + 1, "loss": value, "lr": lr,
                                     "images_per_s": round(ips, 1)})
            if self.step_in_epoch >= self.steps_per_epoch:
                break
            if settings.checkpoint_every and self.step % settings.checkpoint_every == 0:
                self._save()
            if stop_after is not None and self.step >= stop_after:
                return
        self.epoch += 1
        self.step_in_epoch = 0
        self.model.recalibrate(self.calibration)
        self._save()
