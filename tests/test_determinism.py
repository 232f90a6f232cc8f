"""The same seed gives the same sampled policies, the same trained weights and the same searched
policies, also in a fresh process with another hash seed (docs/design.md, "Determinism")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import dataclasses, json, sys
    import timm, torch
    from torch.utils.data import TensorDataset
    import mpqfx
    from mpqfx.integrity import digest
    from mpqfx.train import Trainer

    seed, greedy = int(sys.argv[1]), sys.argv[2] == "greedy"
    gen = torch.Generator().manual_seed(0)
    templates = torch.randn(4, 3, 16, 16, generator=gen)
    labels = torch.randint(0, 4, (192,), generator=gen)
    images = templates[labels] + 0.8 * torch.randn(192, 3, 16, 16, generator=gen)
    recipe = mpqfx.Recipe.load("oneshot")
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=1, batch_size=32, seed=seed,
                                                                   warmup_epochs=0)).check()
    torch.manual_seed(seed)
    net = mpqfx.prepare(timm.create_model("test_resnet", num_classes=4), recipe, example_input=images[:1])
    sampled, set_policy = [], net.set_policy
    net.set_policy = lambda p: (sampled.append(p.to_dict()), set_policy(p))[1]
    Trainer(net, TensorDataset(images[:128], labels[:128]), recipe, progress=False).fit()
    net.set_policy = set_policy
    net.eval()
    data = [(images[128:160], labels[128:160]), (images[160:], labels[160:])]
    searched = {}
    for backend, options in [("ilp", {"objective": "limpq"}), ("ilp", {"objective": "sensitivity"})] + greedy * [("greedy", {})]:
        found = mpqfx.search(net, "bitops=uniform:5", backend=backend, options=options, data=data, calibration=data)
        searched[f"{backend} {options}"] = found.policy.to_dict()
    print(json.dumps({"sampled": sampled, "searched": searched, "weights": digest(net.state_dict()),
                      "samples": [mpqfx.Policy.sample(net, seed + i).to_dict() for i in range(3)]}))
''')


def run(seed: int, hash_seed: str, greedy: bool = False) -> dict:
    """What one fresh process trains and searches (the greedy search too: slow)."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(seed), "greedy" if greedy else "ilp"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_same_seed_same_policies_weights_and_searches_in_fresh_processes():
    first, second = run(0, "1"), run(0, "2")
    assert len(first["sampled"]) >= 4 * 4  # 4 steps, max + 3 sampled policies each
    assert len(first["searched"]) == 2 and first == second


@pytest.mark.slow
def test_the_greedy_search_too_and_another_seed_gives_other_policies_and_weights():
    first, second, other = run(0, "1", greedy=True), run(0, "2", greedy=True), run(1, "1", greedy=True)
    assert len(first["searched"]) == 3 and first == second
    assert other["sampled"] != first["sampled"] and other["weights"] != first["weights"]
    assert other["samples"] != first["samples"]
