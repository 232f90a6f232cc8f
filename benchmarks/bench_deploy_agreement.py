"""Where a deployed model departs from the supernet: top-1 accuracy and agreement with the supernet
on a run's held-out split, for the deployed module as exported and with each of its two integer
approximations undone (8-bit requantization of the tensors the supernet keeps in float; int32
biases in accumulator units). The deployed PyTorch module computes what onnxruntime's integer
kernels compute (check.py measures the file itself); undoing both gives the supernet back.
The last row of each policy is the supernet itself computed in float64: how far rounding noise
alone (an activation within float32 error of a rounding boundary) moves its predictions.

Usage: python benchmarks/bench_deploy_agreement.py RUN_DIR POLICY [POLICY ...]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _machine import header  # noqa: E402
from mpqfx.data.spec import DataSpec, fixed_batches  # noqa: E402
from mpqfx.evaluate import recalibrated_bn  # noqa: E402
from mpqfx.export import deploy  # noqa: E402
from mpqfx.export.deploy import QUANTIZED_TYPES  # noqa: E402
from mpqfx.export.qdq import ActivationQuantizer  # noqa: E402
from mpqfx.export.run import named_policy, resolve_policy  # noqa: E402
from mpqfx.models import create_model  # noqa: E402
from mpqfx.rundir import RunDir  # noqa: E402
from mpqfx.store import load_supernet  # noqa: E402


def _set_variant(module, requantize: bool, int_bias: bool) -> None:
    for m in module.modules():
        if isinstance(m, ActivationQuantizer) and m.from_data:
            m.observing, m.seen = not requantize, None
        if isinstance(m, QUANTIZED_TYPES):
            if int_bias:
                m.weight_scale.copy_(m.chosen_weight_scale)
                m.bias_int.copy_(m.chosen_bias_int)
                m.bias_scale.copy_(m.chosen_bias_scale)
            else:
                m.use_float_bias()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("policies", nargs="+")
    args = parser.parse_args()
    run = RunDir(args.run)
    net, _ = load_supernet(run.supernet)
    net.eval()
    spec = DataSpec.from_dict(run.meta()["data"])
    model = create_model(net.model_spec.name, **net.model_spec.kwargs)
    evaluate = net.recipe.evaluate
    calibration = fixed_batches(spec.split("train", model, train=False), evaluate.bn_images, evaluate.batch_size, seed=2)
    held_out = list(DataLoader(spec.split("val", model, train=False), batch_size=evaluate.batch_size))
    print(header(f"Deployed module vs supernet: {net.model_spec.name}, {sum(len(y) for _, y in held_out)} held-out images"))
    print("| policy | supernet top-1 (%) | variant | deployed top-1 (%) | top-1 agreement (%) |\n|---|---:|---|---:|---:|")
    for name in args.policies:
        policy = named_policy(net, resolve_policy(run.root, name)[1], name)
        with recalibrated_bn(net, policy, calibration), net.use_policy(policy):
            module = deploy(net, policy, calibration)
            for m in module.modules():
                if isinstance(m, QUANTIZED_TYPES):
                    m.chosen_weight_scale = m.weight_scale.clone()
                    m.chosen_bias_int, m.chosen_bias_scale = m.bias_int.clone(), m.bias_scale.clone()
            supernet = [net(x).argmax(1) for x, _ in held_out]
            labels = torch.cat([y for _, y in held_out])
            reference = torch.cat(supernet)
            for variant, requantize, int_bias in (("as exported", True, True), ("float tensors kept float", False, True),
                                                  ("float biases", True, False), ("both undone", False, False)):
                _set_variant(module, requantize, int_bias)
                predicted = torch.cat([module(x).argmax(1) for x, _ in held_out])
                print(f"| {name} | {100 * float((reference == labels).float().mean()):.2f} | {variant} | "
                      f"{100 * float((predicted == labels).float().mean()):.2f} | "
                      f"{100 * float((predicted == reference).float().mean()):.2f} |", flush=True)
            double = copy.deepcopy(net).double()
            with double.use_policy(policy):
                predicted = torch.cat([double(x.double()).argmax(1) for x, _ in held_out])
            print(f"| {name} | {100 * float((reference == labels).float().mean()):.2f} | supernet in float64 | "
                  f"{100 * float((predicted == labels).float().mean()):.2f} | "
                  f"{100 * float((predicted == reference).float().mean()):.2f} |", flush=True)


if __name__ == "__main__":
    main()
