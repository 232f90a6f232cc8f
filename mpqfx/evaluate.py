"""Evaluating policies on data: loss and accuracy, BatchNorm re-estimation, incremental evaluation.

* ``evaluate``: mean cross-entropy and top-1 accuracy of one policy over batches.
* ``recalibrated_bn``: re-estimate the statistics of the BatchNorm sets a policy uses on training
  batches (as one-shot supernets need, RFQ and Bit-Mixer do the same), restoring them on exit.
* ``IncrementalEvaluator``: caches every graph node's output for a base policy and re-runs
  only the nodes downstream of the layers a candidate policy changes (the greedy search's
  one-layer moves recompute a fraction of the network instead of all of it).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from mpqfx.quant.policy import Policy
from mpqfx.quant.transitional_bn import TransitionalBatchNorm
from mpqfx.supernet import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    images: int


def _accumulate(outputs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> EvalResult:
    loss, correct, count = 0.0, 0, 0
    for logits, labels in outputs:
        loss += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        count += labels.numel()
    return EvalResult(loss / max(count, 1), correct / max(count, 1), count)


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


@torch.no_grad()
def evaluate(net: Supernet, policy: Policy, batches: Iterable[Batch]) -> EvalResult:
    """Loss and top-1 accuracy of ``policy`` (eval mode, stored BatchNorm statistics)."""
    device = _device(net)
    was_training = net.training
    net.eval()
    try:
        with net.use_policy(policy):
            return _accumulate((net(x.to(device)), y.to(device)) for x, y in batches)
    finally:
        net.train(was_training)


def active_batchnorms(net: Supernet) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm modules the current policy runs: each Transitional BN's active set and every
    plain BatchNorm (inactive sets are left alone)."""
    inside = {id(m) for bn in net.transitional_bns() for s in bn.sets.values() for m in s.modules()}
    plain = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]
    return plain + [bn.sets[bn.active] for bn in net.transitional_bns()]


@contextmanager
def recalibrated_bn(net: Supernet, policy: Policy, batches: Sequence[Batch], restore: bool = True) -> Iterator[None]:
    """Re-estimate the statistics of the BatchNorms ``policy`` uses from ``batches`` (a cumulative
    average over them), run the body with them, then put the old statistics back (unless
    ``restore=False``, e.g. before exporting)."""
    device = _device(net)
    with net.use_policy(policy):
        bns = active_batchnorms(net) if batches else []
        saved = [({k: v.clone() for k, v in bn.state_dict().items()}, bn.momentum, bn.training) for bn in bns]
        was_training = net.training
        try:
            net.eval()
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative moving average over the calibration batches
                bn.train()
            with torch.no_grad():
                for x, _ in batches:
                    net(x.to(device))
            for bn, (_, momentum, _) in zip(bns, saved):
                bn.momentum = momentum
                bn.eval()
            yield
        finally:
            net.train(was_training)
            for bn, (state, momentum, training) in zip(bns, saved):
                bn.momentum = momentum
                if restore:
                    bn.load_state_dict(state)


class IncrementalEvaluator:
    """Evaluates many policies that each differ from a base policy in a few layers.

    ``set_base(policy)`` runs the graph once per batch and keeps every node's output;
    ``evaluate(policy, changed)`` re-runs only the nodes downstream of the changed layers.
    ``recomputed`` counts nodes run, ``full`` what evaluating from scratch would have run.
    """

    def __init__(self, net: Supernet, batches: Sequence[Batch]):
        self.net = net
        self.gm = net.graph_module
        device = _device(net)
        self.batches = [(x.to(device), y.to(device)) for x, y in batches]
        nodes = list(self.gm.graph.nodes)
        self.order = {n: i for i, n in enumerate(nodes)}
        self.layer_node = self._layer_nodes(nodes)
        self._downstream: dict[str, set[fx.Node]] = {}
        self.cache: list[dict[fx.Node, object]] = []
        self.base: Policy | None = None
        self.recomputed = 0
        self.full = 0

    def _layer_nodes(self, nodes: list[fx.Node]) -> dict[str, fx.Node]:
        """Layer name -> the call_module node that runs it (its leaf module when untraced)."""
        calls = [n for n in nodes if n.op == "call_module"]
        out = {}
        for info in self.net.layers:
            out[info.name] = next(n for n in calls if n.target == info.name or info.name.startswith(n.target + "."))
        return out

    def downstream(self, layer: str) -> set[fx.Node]:
        if layer not in self._downstream:
            seen, stack = set(), [self.layer_node[layer]]
            while stack:
                node = stack.pop()
                if node not in seen:
                    seen.add(node)
                    stack.extend(node.users)
            self._downstream[layer] = seen
        return self._downstream[layer]

    @torch.no_grad()
    def set_base(self, policy: Policy) -> EvalResult:
        self.base = policy
        self.cache = []
        self.net.eval()
        outputs = []
        with self.net.use_policy(policy):
            for x, y in self.batches:
                interp = fx.Interpreter(self.gm, garbage_collect_values=False)
                out = interp.run(x)
                self.cache.append(dict(interp.env))
                outputs.append((out, y))
                self.recomputed += len(self.order)
                self.full += len(self.order)
        return _accumulate(outputs)

    @torch.no_grad()
    def evaluate(self, policy: Policy, changed: Iterable[str]) -> EvalResult:
        dirty: set[fx.Node] = set().union(*(self.downstream(name) for name in changed))
        outputs = []
        self.net.eval()
        with self.net.use_policy(policy):
            for (x, y), env in zip(self.batches, self.cache):
                initial = {n: v for n, v in env.items() if n not in dirty}
                out = fx.Interpreter(self.gm).run(x, initial_env=initial)
                outputs.append((out, y))
                self.recomputed += len(dirty)
                self.full += len(self.order)
        return _accumulate(outputs)
