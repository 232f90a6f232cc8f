"""A 2-process DDP run (torchrun, gloo, CPU): same policies on both ranks, identical parameters, the
recipe's batch shared between the ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent('''
    import json, os, sys, dataclasses
    import timm, torch
    import torch.distributed as dist
    from torch.utils.data import TensorDataset
    import mpqfx
    from mpqfx import Recipe
    from mpqfx.train import Trainer

    out = sys.argv[1]
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    templates = torch.randn(4, 3, 16, 16, generator=gen)
    labels = torch.randint(0, 4, (256,), generator=gen)
    data = TensorDataset(templates[labels] + 0.8 * torch.randn(256, 3, 16, 16, generator=gen), labels)
    recipe = Recipe.load("oneshot")
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, batch_size=32, max_steps=4, log_every=1,
                                 warmup_epochs=0, checkpoint_every=2)).check()
    torch.manual_seed(0)
    net = mpqfx.prepare(timm.create_model("test_resnet", num_classes=4), recipe, example_input=torch.randn(2, 3, 16, 16))
    policies = []
    set_policy = net.set_policy
    net.set_policy = lambda p: (policies.append(p.to_json()), set_policy(p))[1]
    trainer = Trainer(net, data, recipe, run_dir=os.path.join(out, "run"), progress=False)
    trainer.fit()
    rank = dist.get_rank()
    torch.save({k: p.detach() for k, p in net.named_parameters()}, os.path.join(out, f"params{rank}.pt"))
    with open(os.path.join(out, f"policies{rank}.json"), "w") as fh:
        json.dump(policies, fh)
    print("rank", rank, "world", dist.get_world_size(), "steps", trainer.global_step, "per-rank steps/epoch", trainer.steps_per_epoch,
          "batch", trainer.batch_size)
''')


def test_two_process_ddp_run_ends_with_identical_parameters(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "world 2 steps 4 per-rank steps/epoch 8 batch 16" in proc.stdout  # 32 = 2 x 16 images a step
    p0, p1 = torch.load(tmp_path / "params0.pt"), torch.load(tmp_path / "params1.pt")
    assert p0.keys() == p1.keys()
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    pol0 = json.loads((tmp_path / "policies0.json").read_text())
    pol1 = json.loads((tmp_path / "policies1.json").read_text())
    assert pol0 == pol1 and len(pol0) >= 4 * 4  # max + 3 samples per step, the same on both ranks
    run = tmp_path / "run"
    assert (run / "checkpoint.pt").is_file()  # rank 0 wrote it; no second writer
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
