"""The Supernet: a traced, rewritten model whose every layer can run at any allowed bit-width."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import networkx as nx
import torch
import torch.fx as fx
from torch import nn

from mpqfx.graph.layer_graph import previous_layer
from mpqfx.graph.layer_info import LayerInfo, SkippedLayer
from mpqfx.quant.layers import MultiBitMixin
from mpqfx.quant.policy import Policy
from mpqfx.quant.transitional_bn import FLOAT_KEY, TransitionalBatchNorm
from mpqfx.recipe import Recipe


@dataclass(frozen=True)
class ModelSpec:
    """A timm model by name and the keyword arguments it was created with (num_classes, in_chans...)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


class Supernet(nn.Module):
    """A thin wrapper around the rewritten ``torch.fx.GraphModule`` (``.graph_module``).

    Built by :func:`mpqfx.prepare`. ``layers`` lists every quantized layer in execution order;
    ``set_policy`` picks the bit-widths the next forward uses (bypass: the float model).

    Example:
        >>> net = mpqfx.prepare(timm.create_model("test_resnet"), example_input=torch.randn(1, 3, 32, 32))
        >>> net.set_policy(mpqfx.Policy.sample(net, rng=0))
        >>> logits = net(torch.randn(2, 3, 32, 32))
    """

    def __init__(self, graph_module: fx.GraphModule, layers: Sequence[LayerInfo], skipped: Sequence[SkippedLayer],
                 layer_graph: nx.DiGraph, recipe: Recipe, example_input: torch.Tensor, float_params: int,
                 model_spec: ModelSpec | None = None):
        super().__init__()
        self.graph_module = graph_module
        self.layers: tuple[LayerInfo, ...] = tuple(layers)
        self.skipped: tuple[SkippedLayer, ...] = tuple(skipped)
        self.layer_graph = layer_graph
        self.recipe = recipe
        self.example_input = example_input.detach()[:1].cpu()  # what annotate saw; rebuilding needs the same
        self.input_size = tuple(self.example_input.shape[1:])
        self.float_params = float_params  # parameters of the original model outside quantized weights
        self.model_spec = model_spec  # how to re-create the float model (timm name + kwargs), when known
        self._modules_by_layer: dict[str, MultiBitMixin] = {l.name: graph_module.get_submodule(l.name) for l in layers}
        self._bns = [m for m in graph_module.modules() if isinstance(m, TransitionalBatchNorm)]
        self._prev = {bn.layer: previous_layer(layer_graph, bn.layer) for bn in self._bns}
        self._max_w = {l.name: max(l.w_bits) for l in layers}
        self._policy = Policy.bypass(self.layers)
        self.set_policy(self._policy)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph_module(*args, **kwargs)

    # -- layers --------------------------------------------------------------------------------
    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(name)

    def layer_modules(self) -> dict[str, MultiBitMixin]:
        """Layer name -> its multi-bit conv/linear module."""
        return dict(self._modules_by_layer)

    def transitional_bns(self) -> list[TransitionalBatchNorm]:
        return list(self._bns)

    def coverage(self) -> float:
        """Fraction of the model's conv/linear weight parameters that are quantized."""
        quantized = sum(l.params for l in self.layers)
        return quantized / max(quantized + sum(s.params for s in self.skipped), 1)

    # -- policies ------------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._policy

    def set_policy(self, policy: Policy) -> None:
        """Run every layer at the bit-widths of ``policy`` (validated against each layer's allowed bits)."""
        policy.validate(self.layers)
        for name, module in self._modules_by_layer.items():
            module.set_bits(policy[name])
        for bn in self._bns:
            prev = self._prev[bn.layer]
            bn.select(bn.key_for(policy[bn.layer], policy[prev] if prev else None,
                                 self._max_w[prev] if prev else None))
        self._policy = policy

    @contextmanager
    def use_policy(self, policy: Policy) -> Iterator["Supernet"]:
        """Temporarily run at ``policy``; the previous policy comes back on exit."""
        previous = self._policy
        self.set_policy(policy)
        try:
            yield self
        finally:
            self.set_policy(previous)

    def float_teacher(self) -> "Supernet":
        """A frozen copy in bypass mode: the float model, e.g. as a distillation teacher."""
        teacher = copy.deepcopy(self).eval().requires_grad_(False)
        teacher.set_policy(Policy.bypass(teacher.layers))
        return teacher

    @torch.no_grad()
    def refit_quantizers(self) -> None:
        """Fit the quantizers and BatchNorm sets to the current float weights again, as ``prepare``
        does for a new model: weight steps from the weights, activation steps lazily from the next
        batch, every Transitional BN set a copy of the float (``fp``) one. Run it after training
        the float model in bypass mode (``compress``'s warm start)."""
        for module in self._modules_by_layer.values():
            module.weight_quant.init_steps(module.float_weight())
            module.act_quant.reset()
        for bn in self._bns:
            for key, bn_set in bn.sets.items():
                if key != FLOAT_KEY:
                    bn_set.load_state_dict(bn.sets[FLOAT_KEY].state_dict())

    @torch.no_grad()
    def init_activation_steps(self, images: torch.Tensor) -> int:
        """Fit, from ``images``, every activation step that no forward has fitted yet (bit-widths
        training never drew for a layer), so that evaluating or searching later never changes the
        supernet's state. Runs one eval-mode forward per missing bit-width rank; returns how many ran."""
        pending = {name: [b for b, done in zip(m.act_quant.bits, m.act_quant.initialized.tolist()) if not done]
                   for name, m in self._modules_by_layer.items()}
        rounds = max((len(bits) for bits in pending.values()), default=0)
        was_training = self.training
        self.eval()
        try:
            for i in range(rounds):
                policy = Policy({l.name: (max(l.w_bits), pending[l.name][i] if i < len(pending[l.name]) else max(l.a_bits))
                                 for l in self.layers})
                with self.use_policy(policy):
                    self(images)
        finally:
            self.train(was_training)
        return rounds

    def describe(self) -> str:
        """A few lines: layers (traced/untraced), skipped weights with reasons, coverage, BN sets."""
        untraced = [l.name for l in self.layers if not l.traced]
        lines = [f"{len(self.layers)} quantized layers ({len(untraced)} inside untraced leaf modules), "
                 f"coverage {self.coverage():.2%} of conv/linear weights, "
                 f"{len(self._bns)} {self.recipe.quant.bn.value} BatchNorms"]
        lines += [f"  float: {s.name} ({s.module_type}, {s.params} params): {s.reason}" for s in self.skipped]
        lines += [f"  untraced: {name}" for name in untraced]
        return "\n".join(lines)
