"""The training loop shared by every strategy.

It owns data order, the two optimizers (timm's for the latent weights, Adam for quantizer
steps), their timm schedules, EMA, distillation, gradient clipping, autocast on CUDA, the
channels_last layout, progress, the metrics log, checkpoints and DDP. Strategies only decide
what runs in a step.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mpqfx.errors import MpqfxError
from mpqfx.quant.double_rounding import DoubleRoundingQuantizer
from mpqfx.quant.lsq import MultiBitLSQ
from mpqfx.quant.policy import Policy
from mpqfx.recipe import ClipMode, Recipe
from mpqfx.supernet import Supernet
from mpqfx.train.checkpoint import (CheckpointError, as_tuples, fingerprint, load_latest_checkpoint, mismatch,
                                    previous_path, recipe_differences, rng_state, save_checkpoint, set_rng_state)
from mpqfx.train.distributed import init_from_env
from mpqfx.train.losses import task_loss
from mpqfx.train.metrics import MetricsLog, progress_bar
from mpqfx.train.sampler import EpochSampler
from mpqfx.train.strategy import STRATEGIES

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
QUANTIZER_TYPES = (MultiBitLSQ, DoubleRoundingQuantizer)


@dataclass
class RunOutput:
    """What one policy's forward/backward produced."""

    loss: float
    logits: torch.Tensor  # detached


@dataclass
class TrainResult:
    steps: int
    epochs: float
    seconds: float  # wall seconds of every step so far, including those of earlier processes resumed from
    last: dict[str, Any] = field(default_factory=dict)  # metrics of the last step
    checkpoint: Path | None = None
    cpu_seconds: float = 0.0  # process CPU seconds (rank 0), counted the same way


@dataclass(frozen=True)
class Elapsed:
    """Wall and process CPU seconds."""

    wall: float = 0.0
    cpu: float = 0.0

    @classmethod
    def now(cls) -> "Elapsed":
        return cls(time.perf_counter(), time.process_time())

    def since(self, start: "Elapsed") -> "Elapsed":
        """This reading minus ``start``."""
        return Elapsed(self.wall - start.wall, self.cpu - start.cpu)

    def __add__(self, other: "Elapsed") -> "Elapsed":
        return Elapsed(self.wall + other.wall, self.cpu + other.cpu)


def quantizer_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The learnable steps/scales of every quantizer (trained by their own optimizer)."""
    return [p for m in net.modules() if isinstance(m, QUANTIZER_TYPES) for p in m.parameters() if p.requires_grad]


class Trainer:
    """Trains a supernet with the recipe's strategy; ``fit()`` runs it, ``fit(resume=True)`` continues it.

    Every rank draws the same policies (one shared ``random.Random`` seeded from the recipe);
    ``train.batch_size`` is the global batch (each of N ranks takes 1/N of it, so the schedule and
    learning rate do not depend on N); only rank 0 writes files and shows progress. Exact resume (same final parameters as an
    uninterrupted run) holds with ``train.workers: 0`` on CPU. Each checkpoint keeps the one
    before it (``checkpoint.prev.pt``), which a resume falls back to when the latest is damaged;
    ``log`` receives one line saying where a resume continues.

    Example:
        >>> trainer = Trainer(net, train_set, run_dir="runs/demo", progress=False)
        >>> result = trainer.fit()
    """

    def __init__(self, net: Supernet, dataset: Dataset, recipe: Recipe | None = None, run_dir: str | Path | None = None,
                 device: str | torch.device | None = None, teacher: nn.Module | None = None, progress: bool = True,
                 log: Callable[[str], None] | None = None):
        self.recipe = (recipe or net.recipe).check()
        self.cfg = cfg = self.recipe.train
        self.device = init_from_env(device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.net = net.to(self.device, memory_format=self.memory_format)  # before DDP builds its buckets
        self.teacher = (teacher.to(self.device, memory_format=self.memory_format).eval()
                        if teacher is not None and cfg.distill.teacher else None)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if self.distributed else (0, 1)
        self.is_main = self.rank == 0
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME if self.run_dir else None
        self.metrics = MetricsLog(self.run_dir / METRICS_NAME if self.run_dir and self.is_main else None)
        self.show_progress = progress and self.is_main
        self.log = log if log is not None and self.is_main else (lambda message: None)
        self.dataset = dataset
        if cfg.batch_size % self.world:
            raise MpqfxError(f"train.batch_size {cfg.batch_size} is the batch of all {self.world} processes together: "
                             f"it must be a multiple of {self.world}")
        self.batch_size = cfg.batch_size // self.world  # this rank's share of the global batch
        self.sampler = EpochSampler(len(dataset), cfg.seed, self.rank, self.world)
        self.steps_per_epoch = self.sampler.per_rank // self.batch_size
        if self.steps_per_epoch == 0:
            raise MpqfxError(f"train.batch_size {cfg.batch_size} is more than the {len(dataset)} training images")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.global_step = self.epoch = self.step_in_epoch = 0
        self.rng = random.Random(cfg.seed)  # policies: identical on every rank
        self.model: nn.Module = self.net
        if self.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=True)  # each policy leaves other steps and BN sets unused
        self.autocast = (self.device.type == "cuda" and cfg.amp and torch.cuda.is_bf16_supported())
        self.strategy = STRATEGIES.get(self.recipe.strategy.name)(self, self.recipe.strategy.options)
        self._build_optimizers()
        self.ema = ModelEmaV3(self.net, decay=cfg.ema_decay) if cfg.ema_decay else None
        self._strategy_ready = False
        self._saved_step: int | None = None  # the step of the checkpoint this process wrote last
        self.carried = Elapsed()  # time the steps up to the loaded checkpoint took in earlier processes
        self._fit_started: Elapsed | None = None

    # -- setup ---------------------------------------------------------------------------------
    def _build_optimizers(self) -> None:
        cfg = self.cfg
        quant = quantizer_parameters(self.net)
        quant_ids = {id(p) for p in quant}
        weights = [p for p in self.net.parameters() if p.requires_grad and id(p) not in quant_ids]
        groups = [{"params": [p for p in weights if p.ndim > 1], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in weights if p.ndim <= 1], "weight_decay": 0.0}]
        self.optimizer = create_optimizer_v2([g for g in groups if g["params"]], opt=cfg.optimizer, lr=cfg.lr,
                                             weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        self.quant_optimizer = (create_optimizer_v2(quant, opt="adam", lr=cfg.quant_lr, weight_decay=0.0)
                                if quant and cfg.quant_lr > 0 else None)
        self.scheduler = self._scheduler(self.optimizer, cfg.lr)
        self.quant_scheduler = self._scheduler(self.quant_optimizer, cfg.quant_lr) if self.quant_optimizer else None
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]] + quant

    def _scheduler(self, optimizer: torch.optim.Optimizer, base_lr: float):
        cfg = self.cfg
        scale = base_lr / cfg.lr
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
            min_lr=cfg.min_lr * scale, warmup_lr=base_lr / 100, step_on_epochs=False,
            updates_per_epoch=self.steps_per_epoch)
        return scheduler

    @property
    def has_checkpoint(self) -> bool:
        """Whether the run directory holds a checkpoint to resume (the latest or the one kept before it)."""
        return self.checkpoint_path is not None and (self.checkpoint_path.is_file()
                                                     or previous_path(self.checkpoint_path).is_file())

    # -- what strategies call --------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return self.global_step / self.total_steps

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor | None:
        """The float teacher's output when ``train.distill.teacher`` is on and a teacher was given."""
        if self.teacher is None:
            return None
        with torch.no_grad(), self._autocast():
            return self.teacher(images).float()

    def run(self, policy: Policy, images: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None,
            extra_loss: Callable[[], torch.Tensor] | None = None, weight: float = 1.0, sync: bool = True) -> RunOutput:
        """Forward and backward one policy; gradients accumulate until ``optimizer_step``.

        ``extra_loss`` is evaluated after the forward (so hooks have fired) and added to the
        task loss; ``weight`` scales the total; ``sync=False`` skips the DDP all-reduce (use it for
        every backward of a step but the last).
        """
        self.net.set_policy(policy)
        no_sync = self.model.no_sync() if self.distributed and not sync else contextlib.nullcontext()
        with no_sync:
            with self._autocast():
                logits = self.model(images)
            loss = task_loss(logits, labels, self.cfg.label_smoothing, teacher_logits, self.cfg.distill)
            if extra_loss is not None:
                loss = loss + extra_loss()
            (loss * weight).backward()
        return RunOutput(float(loss.detach()), logits.detach().float())

    def optimizer_step(self, quant_lr: float | None = None) -> None:
        """Clip, step both optimizers (quantizer steps at ``quant_lr`` if given), zero grads, update EMA."""
        cfg = self.cfg
        if cfg.grad_clip is not None:
            params = [p for p in self._params if p.grad is not None]
            if cfg.grad_clip_mode is ClipMode.VALUE:
                nn.utils.clip_grad_value_(params, cfg.grad_clip)
            else:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        self.optimizer.step()
        if self.quant_optimizer is not None:
            saved = [g["lr"] for g in self.quant_optimizer.param_groups]
            if quant_lr is not None:
                for g in self.quant_optimizer.param_groups:
                    g["lr"] = quant_lr
            self.quant_optimizer.step()
            for g, lr in zip(self.quant_optimizer.param_groups, saved):
                g["lr"] = lr
            self.quant_optimizer.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.net, step=self.global_step)

    @property
    def quant_lr(self) -> float:
        return self.quant_optimizer.param_groups[0]["lr"] if self.quant_optimizer else 0.0

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to the end of the schedule (``stop_after`` steps at most, for interruption tests)."""
        self._fit_started = Elapsed.now()
        cfg = self.cfg
        if resume:
            self._load()
        else:
            if self.has_checkpoint:
                raise CheckpointError(f"{str(self.run_dir)!r} already holds a checkpoint; resume it or use another run directory")
            self.metrics.truncate_after(0)  # records of an earlier start whose checkpoint is gone
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
            torch.manual_seed(cfg.seed + self.rank)
        if not self._strategy_ready:
            self.strategy.setup()
            self._strategy_ready = True
        self.net.train()
        last: dict[str, Any] = {}
        self.net.to(memory_format=self.memory_format)
        try:
            with progress_bar(self.show_progress) as bar:
                while self.global_step < self.total_steps:
                    if stop_after is not None and self.global_step >= stop_after:
                        return self._result(last, None)
                    last = self._run_epoch(bar, stop_after) or last
        finally:  # search, evaluation and export see the standard layout
            self.net.to(memory_format=torch.contiguous_format)
        self.net.init_activation_steps(self._fixed_batch())
        self.strategy.finish(self.run_dir)
        self.save()
        return self._result(last, self.checkpoint_path)

    def elapsed(self) -> Elapsed:
        """Time spent training so far: the checkpoint's carried time plus this process's ``fit``."""
        return self.carried + (Elapsed.now().since(self._fit_started) if self._fit_started else Elapsed())

    def _result(self, last: dict[str, Any], checkpoint: Path | None) -> TrainResult:
        spent = self.elapsed()
        return TrainResult(self.global_step, self.global_step / self.steps_per_epoch, spent.wall, last, checkpoint,
                           spent.cpu)

    def _run_epoch(self, bar, stop_after: int | None) -> dict[str, Any]:
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch, self.step_in_epoch * self.batch_size)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                            num_workers=cfg.workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed * 1000 + self.epoch))
        task = bar.add_task(f"epoch {self.epoch + 1}/{cfg.epochs}", total=self.steps_per_epoch,
                            completed=self.step_in_epoch, loss=float("nan"), lr=self.optimizer.param_groups[0]["lr"], ips=0.0)
        record: dict[str, Any] = {}
        for images, labels in loader:
            tick = time.perf_counter()
            images = images.to(self.device, non_blocking=True,
                               memory_format=self.memory_format if images.dim() == 4 else torch.preserve_format)
            labels = labels.to(self.device, non_blocking=True)
            metrics = self.strategy.train_step(images, labels)
            self.global_step += 1
            self.step_in_epoch += 1
            self._update_schedules()
            ips = images.shape[0] * self.world / max(time.perf_counter() - tick, 1e-9)
            record = {"step": self.global_step, "epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                      "quant_lr": self.quant_lr, "images_per_s": round(ips, 1), **metrics}
            bar.update(task, advance=1, loss=metrics.get("loss", float("nan")), lr=record["lr"], ips=ips)
            done = self.global_step >= self.total_steps
            if self.global_step % cfg.log_every == 0 or done:
                self.metrics.append(record)
            if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                self.save()
            if done or (stop_after is not None and self.global_step >= stop_after):
                break
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
            if self.global_step < self.total_steps:
                self.save()
        return record

    def _fixed_batch(self) -> torch.Tensor:
        """The first ``batch_size`` training images in index order (the same on every rank)."""
        count = min(self.cfg.batch_size, len(self.dataset))
        return torch.stack([self.dataset[i][0] for i in range(count)]).to(self.device)

    def _update_schedules(self) -> None:
        for scheduler in (self.scheduler, self.quant_scheduler):
            if scheduler is not None:
                scheduler.step_update(num_updates=self.global_step)

    @contextlib.contextmanager
    def _autocast(self):
        if self.autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "quant_optimizer": self.quant_optimizer.state_dict() if self.quant_optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "quant_scheduler": self.quant_scheduler.state_dict() if self.quant_scheduler else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "strategy": self.strategy.state_dict(),
            "rng": self._rng_states(), "policy_rng": self.rng.getstate(),
            "step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "total_steps": self.total_steps,
            "recipe": self.recipe.to_dict(),
            "fingerprint": fingerprint(self.net.state_dict()),
            "seconds": asdict(self.elapsed()),
        }

    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's global RNG state (gathered to all ranks under DDP), indexed by rank."""
        if not self.distributed:
            return [rng_state()]
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, rng_state())
        return states

    def save(self) -> None:
        """Write the checkpoint atomically (rank 0 writes; every rank must call it under DDP)."""
        if self.checkpoint_path is None:
            return
        state = self.state_dict()
        if self.is_main:  # a second save at the same step (an epoch end) keeps the earlier step's file
            save_checkpoint(self.checkpoint_path, state, keep_previous=self._saved_step != self.global_step)
        self._saved_step = self.global_step

    def _load(self) -> None:
        if self.checkpoint_path is None:
            raise CheckpointError("resume needs a run directory")
        state, passed_over = load_latest_checkpoint(self.checkpoint_path, map_location=self.device)
        source = previous_path(self.checkpoint_path) if passed_over else self.checkpoint_path
        if passed_over:
            self.log(f"{passed_over}; resuming from the checkpoint before it ({source.name})")
        changed = recipe_differences(self.recipe.to_dict(), state["recipe"])
        if changed:
            raise CheckpointError(f"checkpoint {str(source)!r} was written with a different recipe "
                                  f"(fields: {', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}); resume "
                                  "with the recipe it was written with, or train in another run directory")
        problem = mismatch(fingerprint(self.net.state_dict()), state["fingerprint"], "model layers")
        if problem:
            raise CheckpointError(f"checkpoint {str(source)!r} belongs to another model: {problem}; resume with "
                                  "the model it was written for, or train in another run directory")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for obj, key in ((self.quant_optimizer, "quant_optimizer"), (self.scheduler, "scheduler"),
                         (self.quant_scheduler, "quant_scheduler"), (self.ema, "ema")):
            if obj is not None and state[key] is not None:
                obj.load_state_dict(state[key])
        self.strategy.load_state_dict(state["strategy"])
        rngs = state["rng"]
        if len(rngs) != self.world:
            raise CheckpointError(f"checkpoint {str(source)!r} was written by {len(rngs)} rank(s), this run has "
                                  f"{self.world}; resume with {len(rngs)} process(es) in all")
        set_rng_state(rngs[self.rank])
        self.rng.setstate(as_tuples(state["policy_rng"]))
        self.global_step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        self.carried = Elapsed(**state.get("seconds", {}))  # absent from checkpoints written before it was kept
        self.metrics.truncate_after(self.global_step)
        self._strategy_ready = True
        self._update_schedules()
        self.log(f"resuming from {source.name} at step {self.global_step} of {self.total_steps} "
                 f"(epoch {min(self.epoch + 1, self.cfg.epochs)} of {self.cfg.epochs})")


def train(net: Supernet, dataset: Dataset, recipe: Recipe | None = None, run_dir: str | Path | None = None,
          resume: bool = False, **kwargs: Any) -> TrainResult:
    """Train ``net`` on ``dataset`` with the recipe's strategy (see :class:`Trainer`)."""
    return Trainer(net, dataset, recipe, run_dir, **kwargs).fit(resume=resume)
