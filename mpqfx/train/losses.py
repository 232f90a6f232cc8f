"""Task loss of one policy: label-smoothed cross-entropy, optionally mixed with distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpqfx.recipe import DistillConfig


def distill_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on softened outputs, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, dim=-1), F.softmax(teacher_logits.detach() / t, dim=-1),
                    reduction="batchmean") * t * t


def task_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
              teacher_logits: torch.Tensor | None = None, distill: DistillConfig | None = None) -> torch.Tensor:
    """CE on the labels; with a teacher, ``ce_weight * CE + kl_weight * KL``."""
    ce = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    if teacher_logits is None or distill is None:
        return ce
    return distill.ce_weight * ce + distill.kl_weight * distill_kl(logits.float(), teacher_logits.float(), distill.temperature)
