"""Top-1 accuracy and loss against hand counts: hand-set logits with known labels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mpqfx
from mpqfx import Policy
from mpqfx.evaluate import IncrementalEvaluator, evaluate

# six samples of four classes; the labels' logits are the largest in samples 0, 2, 3 and 5 only
LOGITS = [[4.0, 1.0, 0.0, -1.0], [0.5, 3.0, -2.0, 0.0], [-1.0, 0.0, 2.5, 1.0],
          [0.0, 0.0, 1.0, 6.0], [2.0, -3.0, 0.0, 1.5], [1.0, 2.0, -0.5, 0.0]]
LABELS = [0, 2, 2, 3, 1, 1]
CORRECT = 4  # counted by hand from the table above (argmin would count 2: samples 1 and 4)


class PassLogits(nn.Module):
    """One linear layer holding the identity: its bypass output is its input, so the logits are set by hand."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(4))

    def forward(self, x):
        return self.fc(x)


def _hand_loss() -> float:
    """Mean cross-entropy with Python's math: -log(exp(z_y) / sum exp(z))."""
    return sum(math.log(sum(math.exp(z) for z in row)) - row[y] for row, y in zip(LOGITS, LABELS)) / len(LABELS)


@pytest.fixture
def net():
    return mpqfx.prepare(PassLogits(), example_input=torch.zeros(1, 4)).eval()


def _batches():
    x, y = torch.tensor(LOGITS), torch.tensor(LABELS)
    return [(x[:4], y[:4]), (x[4:], y[4:])]  # unequal batches: the mean is over images, not batches


def test_top1_and_loss_match_a_hand_count(net):
    policy = Policy.bypass(net)
    with torch.no_grad(), net.use_policy(policy):
        assert torch.equal(net(torch.tensor(LOGITS)), torch.tensor(LOGITS))  # the logits are the hand-set ones
    result = evaluate(net, policy, _batches())
    assert result.images == 6
    assert result.accuracy == CORRECT / 6
    assert result.loss == pytest.approx(_hand_loss(), rel=1e-6)


def test_the_incremental_evaluator_counts_the_same(net):
    policy = Policy.bypass(net)
    evaluator = IncrementalEvaluator(net, _batches())
    for result in (evaluator.set_base(policy), evaluator.evaluate(policy, ["fc"])):
        assert (result.images, result.accuracy) == (6, CORRECT / 6)
        assert result.loss == pytest.approx(_hand_loss(), rel=1e-6)
