"""The shared loop: every strategy end to end, exact resume, checkpoint errors, bad recipes, metrics."""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import pytest
import torch

from mpqfx import Policy, Recipe, RecipeError
from mpqfx.train import Trainer
from mpqfx.train.checkpoint import CheckpointError

STRATEGY_OPTIONS = {
    "oneshot": {"schedule_every": 3, "qe_start": 0.3},
    "limpq": None,
    "double_rounding": {"hessian_images": 64, "hessian_samples": 2, "multi_precision": 0.5},
    "bitmixer": {"stages": (0.25, 0.25, 0.5)},
}


@pytest.mark.parametrize("name", sorted(STRATEGY_OPTIONS))
def test_strategy_trains_and_loss_falls(name, make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe(name, STRATEGY_OPTIONS[name], epochs=3)
    net = make_net(recipe)
    result = Trainer(net, dataset, recipe, run_dir=tmp_path, progress=False).fit()
    assert result.steps == 3 * (len(dataset) // 32)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, result.steps + 1))
    assert {"loss", "lr", "quant_lr", "images_per_s", "epoch"} <= set(records[0])
    first, last = sum(r["loss"] for r in records[:4]) / 4, sum(r["loss"] for r in records[-4:]) / 4
    assert last < 0.7 * first, f"{name}: loss {first:.3f} -> {last:.3f}"
    assert (tmp_path / "checkpoint.pt").is_file()


def _params(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", sorted(STRATEGY_OPTIONS))
def test_checkpoint_kill_resume_equals_an_uninterrupted_run(name, make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe(name, STRATEGY_OPTIONS[name], max_steps=10, checkpoint_every=4)
    whole = make_net(recipe)
    Trainer(whole, dataset, recipe, run_dir=tmp_path / "whole", progress=False).fit()

    first = make_net(recipe)
    Trainer(first, dataset, recipe, run_dir=tmp_path / "cut", progress=False).fit(stop_after=6)  # "killed" at 6
    resumed = make_net(recipe)  # a fresh process would rebuild the supernet the same way
    trainer = Trainer(resumed, dataset, recipe, run_dir=tmp_path / "cut", progress=False)
    trainer.fit(resume=True)  # continues from the checkpoint at step 4
    expected, got = _params(whole), _params(resumed)
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))  # the lost steps 5-6 were logged once, after the resume


def test_resumed_training_time_adds_the_time_before_the_checkpoint(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("oneshot", max_steps=6, checkpoint_every=4)
    started = time.perf_counter()
    Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit(stop_after=5)  # "killed" at 5
    first_process = time.perf_counter() - started
    carried = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["seconds"]  # written at step 4
    assert 0 < carried["wall"] < first_process and carried["cpu"] > 0

    trainer = Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False)
    started = time.perf_counter()
    result = trainer.fit(resume=True)
    second_process = time.perf_counter() - started
    assert (trainer.carried.wall, trainer.carried.cpu) == (carried["wall"], carried["cpu"])
    assert carried["wall"] < result.seconds < carried["wall"] + second_process
    assert result.cpu_seconds > carried["cpu"]
    final = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["seconds"]  # written at step 6, before fit returns
    assert carried["wall"] < final["wall"] <= result.seconds


def test_resume_refuses_a_checkpoint_of_another_model(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("oneshot", max_steps=2)
    Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    other = make_net(recipe, model="test_efficientnet")
    with pytest.raises(CheckpointError, match=r"belongs to another model: model layers differ \(missing: graph_module"):
        Trainer(other, dataset, recipe, run_dir=tmp_path, progress=False).fit(resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_a_checkpoint_of_another_recipe(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("oneshot", max_steps=2)
    Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    changed = small_recipe("oneshot", {"samples": 2}, max_steps=2, lr=0.01)
    with pytest.raises(CheckpointError, match=r"different recipe \(fields: strategy.options.samples, train.lr\)"):
        Trainer(make_net(changed), dataset, changed, run_dir=tmp_path, progress=False).fit(resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_a_fresh_run_does_not_overwrite_a_checkpoint(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("bitmixer", max_steps=1)
    Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit()
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit()


def test_resume_without_a_checkpoint_says_so(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("bitmixer", max_steps=1)
    with pytest.raises(CheckpointError, match="no checkpoint at .*nothing to resume"):
        Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit(resume=True)


def test_truncated_checkpoint_is_detected_and_the_error_says_what_to_do(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("bitmixer", max_steps=1)
    Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit()
    path = tmp_path / "checkpoint.pt"
    assert not (tmp_path / "checkpoint.prev.pt").exists()  # one step, one checkpoint
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as info:
        Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit(resume=True)
    message = str(info.value)
    assert "checkpoint.pt' is corrupt or truncated (RuntimeError: PytorchStreamReader failed" in message
    assert message.endswith("no earlier checkpoint is kept. Delete it "
                            f"({str(path)!r}) to train this phase again from step 0, then resume")


def _steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_damaged_checkpoint_falls_back_to_the_one_before_it(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("oneshot", STRATEGY_OPTIONS["oneshot"], max_steps=10, checkpoint_every=4)
    whole = make_net(recipe)
    Trainer(whole, dataset, recipe, run_dir=tmp_path / "whole", progress=False).fit()
    cut = tmp_path / "cut"
    Trainer(make_net(recipe), dataset, recipe, run_dir=cut, progress=False).fit(stop_after=9)  # checkpoints at 4, 8
    assert torch.load(cut / "checkpoint.prev.pt", weights_only=True)["step"] == 4
    latest = cut / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:len(latest.read_bytes()) // 2])
    lines = []
    resumed = make_net(recipe)
    Trainer(resumed, dataset, recipe, run_dir=cut, progress=False, log=lines.append).fit(resume=True)
    assert len(lines) == 2
    assert "checkpoint.pt' is corrupt or truncated" in lines[0] and lines[0].endswith(
        "resuming from the checkpoint before it (checkpoint.prev.pt)")
    assert lines[1] == "resuming from checkpoint.prev.pt at step 4 of 10 (epoch 1 of 2)"
    expected, got = _params(whole), _params(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert _steps(cut) == list(range(1, 11))  # steps 5-9 logged again once, not twice


def test_both_checkpoints_damaged_says_what_to_do(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("bitmixer", max_steps=4, checkpoint_every=2)
    Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit(stop_after=3)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (tmp_path / name).write_bytes(b"not a zip")
    with pytest.raises(CheckpointError) as info:
        Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit(resume=True)
    message = str(info.value)
    assert "checkpoint.pt' is corrupt or truncated" in message and "the earlier checkpoint" in message
    assert message.endswith("Delete both to train this phase again from step 0, then resume")


def test_a_fresh_start_after_a_deleted_checkpoint_does_not_repeat_metrics(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("bitmixer", max_steps=3)
    Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit(stop_after=2)
    assert _steps(tmp_path) == [1, 2]
    (tmp_path / "checkpoint.pt").unlink(missing_ok=True)  # what a user does with a corrupt only checkpoint
    Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path, progress=False).fit()
    assert _steps(tmp_path) == [1, 2, 3]


@pytest.mark.parametrize("text,problems", [
    ("strategy: {name: oneshot, options: {samples: 0}}\ntrain: {lr: -1}",
     ["strategy.options.samples: K must be >= 1", "train.lr: must be > 0"]),
    ("strategy: {name: oneshot, options: {uniform_share: 1.5}}",
     ["strategy.options.uniform_share: must be in [0, 1], got 1.5"]),
    ("strategy: {name: nope}\ntrain: {epochs: 0, optimizer: sgdd}",
     ["strategy.name: unknown strategy 'nope'; registered: bitmixer, calibrate, double_rounding, float, limpq, oneshot",
      "train.epochs: must be >= 1", "train.optimizer: 'sgdd' is not allowed"]),
    ("strategy: {name: bitmixer, options: {stages: [0.5, 0.5, 0.5]}}\nquant: {bn: shared}",
     ["strategy.options.stages: [0.5, 0.5, 0.5] must add up to 1 (they add up to 1.5)",
      "quant.bn: bitmixer needs 'transitional'"]),
    ("strategy: {name: double_rounding, options: {sigma: 2}}",
     ["quant.weight_quantizer: the double_rounding strategy needs 'double_rounding'",
      "strategy.options.sigma: must be in [0, 1]"]),
    ("strategy: {name: oneshot, options: {samplez: 3}}\ntrain: {distill: {kl_weight: -1}}",
     ["strategy.options.samplez: unknown field", "train.distill.kl_weight: must be >= 0"]),
])
def test_bad_training_fields_are_all_listed_in_one_error(text, problems):
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(text)
    joined = " | ".join(info.value.problems)
    for problem in problems:
        assert problem in joined, joined


def test_batch_larger_than_the_dataset_is_a_clear_error(make_net, small_recipe, dataset):
    recipe = small_recipe("oneshot", batch_size=1024)
    with pytest.raises(Exception, match=r"train.batch_size 1024 is more than the 256 training images"):
        Trainer(make_net(recipe), dataset, recipe, progress=False)


def test_float_teacher_distillation_uses_the_teacher(make_net, small_recipe, dataset, monkeypatch):
    recipe = small_recipe("bitmixer", max_steps=1)
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(
        recipe.train, distill=dataclasses.replace(recipe.train.distill, teacher=True, kl_weight=1.0))).check()
    teacher = make_net(recipe)
    trainer = Trainer(make_net(recipe), dataset, recipe, teacher=teacher, progress=False)
    seen = []
    run = trainer.run
    monkeypatch.setattr(trainer, "run", lambda *a, **k: (seen.append(k.get("teacher_logits")), run(*a, **k))[1])
    trainer.fit()
    assert seen and all(t is not None for t in seen)


def test_resume_with_ema_and_norm_clipping_is_exact(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("bitmixer", max_steps=6, checkpoint_every=2, ema_decay=0.9, grad_clip_mode="norm",
                          optimizer="adamw", lr=1e-3)
    whole = make_net(recipe)
    t_whole = Trainer(whole, dataset, recipe, run_dir=tmp_path / "whole", progress=False)
    t_whole.fit()
    Trainer(make_net(recipe), dataset, recipe, run_dir=tmp_path / "cut", progress=False).fit(stop_after=3)
    resumed = make_net(recipe)
    t_resumed = Trainer(resumed, dataset, recipe, run_dir=tmp_path / "cut", progress=False)
    t_resumed.fit(resume=True)
    for a, b in ((whole, resumed), (t_whole.ema.module, t_resumed.ema.module)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ema_w = t_whole.ema.module.layer_modules()[whole.layers[2].name].weight
    assert not torch.equal(ema_w, whole.layer_modules()[whole.layers[2].name].weight)  # the EMA lags the model


def test_training_ends_with_every_activation_step_fitted(make_net, small_recipe, dataset):
    recipe = small_recipe("oneshot", {"samples": 1}, epochs=1, max_steps=1)
    net = make_net(recipe)
    Trainer(net, dataset, recipe, progress=False).fit()  # one step: most (layer, bit) pairs never drawn
    for name, module in net.layer_modules().items():
        assert bool(module.act_quant.initialized.all()), name
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for seed in range(5):  # evaluating any policy afterwards leaves the supernet as it was
            with net.eval().use_policy(Policy.sample(net, seed)):
                net(dataset.tensors[0][:8])
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_training_runs_channels_last_and_ends_contiguous(make_net, small_recipe, dataset, monkeypatch):
    """``train.channels_last`` feeds NHWC batches to NHWC weights while training; afterwards the
    net is back in the standard layout for search, evaluation and export."""
    for channels_last in (True, False):
        recipe = small_recipe("oneshot", STRATEGY_OPTIONS["oneshot"], max_steps=2, channels_last=channels_last)
        net = make_net(recipe)
        trainer = Trainer(net, dataset, recipe, progress=False)
        seen, step = [], trainer.strategy.train_step

        def recording_step(images, labels, step=step):
            seen.append((images.is_contiguous(), net.layer_modules()["layer1.0.conv1"].weight.is_contiguous()))
            return step(images, labels)
        monkeypatch.setattr(trainer.strategy, "train_step", recording_step)
        trainer.fit()
        assert seen == [(not channels_last, not channels_last)] * 2
        assert all(p.is_contiguous() for p in net.parameters())


def test_channels_last_forward_and_backward_equal_contiguous(make_net, small_recipe, dataset):
    """The layout changes which kernels run, not what a quantized policy computes. In float64, at
    the max policy (6-bit, first/last 8), so that rounding differences between the kernels cannot
    move a value across a quantizer level or a kink: at 2-4 bits this random tiny net has channels
    that are constant over the batch, whose max-pool windows tie and whose ReLU inputs cancel to
    0 or 1e-15, and the NCHW and NHWC kernels then route a gradient differently (both valid
    subgradients; measured on an AVX2 host, 2026-12-03)."""
    net = make_net(small_recipe("oneshot")).train().double()
    images, labels = dataset.tensors[0][:16].double(), dataset.tensors[1][:16]
    net.init_activation_steps(images)
    net.set_policy(Policy.max(net))
    nhwc = copy.deepcopy(net).to(memory_format=torch.channels_last)
    results = []
    for model, x in ((net, images), (nhwc, images.contiguous(memory_format=torch.channels_last))):
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        results.append([logits.detach()] + [p.grad for p in model.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 1
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
