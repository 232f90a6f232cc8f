"""Top-1 accuracy and loss against hand counts: hand-set logits with known labels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mpqfx
from mpqfx import Policy, Recipe
from mpqfx.evaluate import EvalResult, IncrementalEvaluator, evaluate
from mpqfx.recipe import GraphConfig

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


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_recalibrated_statistics_are_the_average_over_the_calibration_batches_and_are_restored():
    torch.manual_seed(0)
    model = ConvBN().eval()
    net = mpqfx.prepare(model, example_input=torch.randn(1, 3, 4, 4)).eval()
    gen = torch.Generator().manual_seed(3)
    batches = [(2 + 3 * torch.randn(5, 3, 4, 4, generator=gen), None) for _ in range(3)]
    policy = Policy.bypass(net)  # the conv computes the float conv: its outputs are known outside mpqfx
    outputs = [torch.nn.functional.conv2d(x, model.conv.weight, model.conv.bias) for x, _ in batches]
    mean = sum(o.mean((0, 2, 3)) for o in outputs) / 3  # cumulative average: each batch counts once
    var = sum(o.transpose(0, 1).reshape(4, -1).var(1) for o in outputs) / 3  # unbiased, as BatchNorm keeps it
    with net.use_policy(policy):
        (bn,) = [m for m in mpqfx.evaluate.active_batchnorms(net) if m.num_features == 4]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with mpqfx.evaluate.recalibrated_bn(net, policy, batches):
        torch.testing.assert_close(bn.running_mean, mean)
        torch.testing.assert_close(bn.running_var, var)
        assert not bn.training and bn.momentum == 0.1  # torch's default, as it was before
        inside = evaluate(net, policy, [(batches[0][0], torch.zeros(5, dtype=torch.long))]).loss
    assert all(torch.equal(v, bn.state_dict()[k]) for k, v in before.items())  # put back
    assert evaluate(net, policy, [(batches[0][0], torch.zeros(5, dtype=torch.long))]).loss != inside
    with mpqfx.evaluate.recalibrated_bn(net, policy, batches, restore=False):
        pass
    torch.testing.assert_close(bn.running_mean, mean)  # kept, as before exporting
    assert net.training is False


def test_no_calibration_batches_leave_the_trained_statistics_in_place():
    torch.manual_seed(0)
    net = mpqfx.prepare(ConvBN().eval(), example_input=torch.randn(1, 3, 4, 4)).eval()
    policy = Policy.bypass(net)
    with net.use_policy(policy):
        (bn,) = [m for m in mpqfx.evaluate.active_batchnorms(net) if m.num_features == 4]
    bn.running_mean.fill_(0.5)
    bn.running_var.fill_(2.0)
    with mpqfx.evaluate.recalibrated_bn(net, policy, [], restore=False):
        assert bn.running_mean.tolist() == [0.5] * 4 and bn.running_var.tolist() == [2.0] * 4


def test_one_image_and_no_images(net):
    row, label = LOGITS[4], LABELS[4]  # a miss: the label's logit is the smallest
    result = evaluate(net, Policy.bypass(net), [(torch.tensor([row]), torch.tensor([label]))])
    assert (result.images, result.accuracy) == (1, 0.0)
    assert result.loss == pytest.approx(math.log(sum(math.exp(z) for z in row)) - row[label], rel=1e-6)
    row, label = LOGITS[0], LABELS[0]  # a hit
    assert evaluate(net, Policy.bypass(net), [(torch.tensor([row]), torch.tensor([label]))]).accuracy == 1.0
    assert evaluate(net, Policy.bypass(net), []) == EvalResult(0.0, 0.0, 0)


def test_the_incremental_evaluator_counts_the_nodes_it_runs(net):
    evaluator = IncrementalEvaluator(net, _batches())
    evaluator.set_base(Policy.bypass(net))
    assert (evaluator.recomputed, evaluator.full) == (2 * 3, 2 * 3)  # 2 batches x (input, fc, output)
    evaluator.evaluate(Policy.bypass(net), ["fc"])
    assert (evaluator.recomputed, evaluator.full) == (6 + 2 * 2, 12)  # fc and the output again


class Leaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.inner(x))


class WithLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.leaf, self.mid, self.last = nn.Linear(4, 4), Leaf(), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.last(self.mid(self.leaf(self.first(x))))


def test_the_incremental_evaluator_reruns_a_layer_inside_a_leaf_module():
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    recipe = Recipe(graph=GraphConfig(leaf_modules=("Leaf",)))
    net = mpqfx.prepare(WithLeaf().eval(), recipe, example_input=x[:2]).eval()
    assert not net.layer("leaf.inner").traced
    batches = [(x, torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(0)))]
    evaluator = IncrementalEvaluator(net, batches)
    evaluator.set_base(Policy.max(net))
    for name in ("leaf.inner", "mid"):
        changed = Policy.max(net).replace(**{name: (2, 2)})
        assert evaluator.evaluate(changed, [name]) == evaluate(net, changed, batches)


def test_a_failing_calibration_batch_leaves_the_statistics_as_they_were():
    torch.manual_seed(0)
    net = mpqfx.prepare(ConvBN().eval(), example_input=torch.randn(1, 3, 4, 4)).eval()
    policy = Policy.bypass(net)
    with net.use_policy(policy):
        (bn,) = [m for m in mpqfx.evaluate.active_batchnorms(net) if m.num_features == 4]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(RuntimeError):  # the second batch has 5 channels, the conv takes 3
        with mpqfx.evaluate.recalibrated_bn(net, policy, [(torch.randn(2, 3, 4, 4), None), (torch.randn(2, 5, 4, 4), None)]):
            pass
    assert bn.momentum == 0.1 and all(torch.equal(v, bn.state_dict()[k]) for k, v in before.items())
