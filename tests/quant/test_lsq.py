"""LSQ forward/backward against straightforward references, and the multi-bit quantizer."""

from __future__ import annotations

import math

import pytest
import torch

from mpqfx.quant.lsq import MultiBitLSQ, OutputReuse, int_range, lsq_quantize, mse_init_steps


def reference_lsq(x, step, qmin, qmax, g):
    """LSQ written the textbook way: gradient-scaled step, clip, round with a straight-through estimator."""
    s = (step - step * g).detach() + step * g
    v = torch.clamp(x / s, qmin, qmax)
    v = (v.round() - v).detach() + v
    return v * s


def analytic_step_grad(x, step, qmin, qmax, g, upstream):
    """LSQ paper Eq. 3: d x_hat / d s = round(x/s) - x/s inside, qmin / qmax outside; times g."""
    v = x / step
    inside = (v > qmin) & (v < qmax)
    local = torch.where(inside, v.round() - v, torch.where(v <= qmin, torch.tensor(float(qmin)), torch.tensor(float(qmax))))
    return (upstream * local).sum() * g


@pytest.mark.parametrize("bits,signed", [(2, True), (3, False), (4, True), (6, False), (8, True)])
def test_forward_and_gradients_equal_reference(bits, signed):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(4, 5, 6, 7, generator=gen) * 2
    upstream = torch.randn(x.shape, generator=gen)
    qmin, qmax = int_range(bits, signed)
    g = 1 / math.sqrt(x[0].numel() * qmax)

    x1 = x.clone().requires_grad_()
    s1 = torch.tensor(0.3, requires_grad=True)
    out1 = lsq_quantize(x1, s1, qmin, qmax, g)
    out1.backward(upstream)

    x2 = x.clone().requires_grad_()
    s2 = torch.tensor(0.3, requires_grad=True)
    out2 = reference_lsq(x2, s2, qmin, qmax, g)
    out2.backward(upstream)

    # the reference's (s - s*g).detach() + s*g trick perturbs s by an ulp, hence the tolerances
    torch.testing.assert_close(out1, out2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-6, atol=1e-6)
    assert s1.grad == pytest.approx(s2.grad.item(), rel=1e-5, abs=1e-7)
    assert s1.grad == pytest.approx(analytic_step_grad(x, torch.tensor(0.3), qmin, qmax, g, upstream).item(), rel=1e-5)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_channel_steps_equal_one_quantizer_per_channel(bits):
    gen = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 5, 3, 3, generator=gen) * torch.linspace(0.1, 3, 6).view(6, 1, 1, 1)
    upstream = torch.randn(w.shape, generator=gen)
    steps = torch.linspace(0.05, 0.6, 6)
    qmin, qmax = int_range(bits, True)
    g = 1 / math.sqrt(w[0].numel() * qmax)

    w1 = w.clone().requires_grad_()
    s1 = steps.view(6, 1, 1, 1).clone().requires_grad_()
    lsq_quantize(w1, s1, qmin, qmax, g).backward(upstream)
    for c in range(6):
        wc = w[c].clone().requires_grad_()
        sc = steps[c].clone().requires_grad_()
        out = lsq_quantize(wc, sc, qmin, qmax, g)
        out.backward(upstream[c])
        torch.testing.assert_close(out, (w1.detach()[c] / steps[c]).clamp(qmin, qmax).round() * steps[c])
        torch.testing.assert_close(w1.grad[c], wc.grad)
        # both are a difference of two float32 dot products summed in different orders (the
        # per-channel sum vs torch.dot), which cancels digits: the order moves it by ~1e-5
        assert s1.grad[c].item() == pytest.approx(sc.grad.item(), rel=1e-4, abs=1e-6)
        assert sc.grad.item() == pytest.approx(
            analytic_step_grad(w[c], steps[c], qmin, qmax, g, upstream[c]).item(), rel=1e-4, abs=1e-6)


def test_per_channel_fit_equals_fitting_each_channel_alone():
    w = torch.randn(8, 16, 3, 3, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 1, 8).view(8, 1, 1, 1)
    ranges = [int_range(b, True) for b in (2, 4, 6)]
    per_channel = mse_init_steps(w, ranges, per_channel=True)
    assert per_channel.shape == (3, 8)
    for c in range(8):
        torch.testing.assert_close(per_channel[:, c], mse_init_steps(w[c], ranges), rtol=1e-5, atol=0)
    quant = MultiBitLSQ((2, 4, 6), signed=True, per_sample=False, step_shape=(8, 1, 1, 1))
    quant.init_steps(w)
    torch.testing.assert_close(quant.step(4).view(-1), per_channel[1])
    relative_error = lambda q: ((q - w).square().sum((1, 2, 3)) / w.square().sum((1, 2, 3))).detach()
    assert relative_error(quant(w, 4)).max() < 0.05  # every channel keeps its values
    assert relative_error(MultiBitLSQ((4,), True, False)(w, 4))[0] == 1  # one step rounds the small channel to 0


def test_output_is_on_the_integer_grid_and_clipped():
    x = torch.linspace(-5, 5, 101)
    out = lsq_quantize(x, torch.tensor(0.5), -4, 3, 1.0)
    ints = out / 0.5
    assert torch.equal(ints, ints.round())
    assert ints.min() == -4 and ints.max() == 3


def test_int_ranges():
    assert int_range(4, signed=True) == (-8, 7)
    assert int_range(4, signed=False) == (0, 15)
    assert int_range(2, signed=True) == (-2, 1)


def test_mse_init_beats_lsq_statistic_at_high_bits():
    w = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(0))
    for bits in (2, 4, 8):
        qmin, qmax = int_range(bits, True)
        s_mse = mse_init_steps(w, [(qmin, qmax)])[0]
        s_lsq = 2 * w.abs().mean() / math.sqrt(qmax)
        err = lambda s: ((w / s).clamp(qmin, qmax).round() * s - w).norm()
        assert err(s_mse) <= err(s_lsq) * 1.001


def test_mse_init_sample_does_not_alias_with_the_activation_layout():
    # An NCHW activation of a dark-background image: the border pixels are 0, the inside carries
    # ReLU6-like values. 256*96*8*8 values read every 96th see only two border positions.
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(256, 96, 8, 8)
    x[:, :, 1:-1, 1:-1] = (torch.randn(256, 96, 6, 6, generator=g) * 2).clamp(0, 6)
    for bits in (3, 6):
        qmin, qmax = int_range(bits, False)
        full = mse_init_steps(x, [(qmin, qmax)], sample=x.numel())[0]
        assert mse_init_steps(x, [(qmin, qmax)])[0].item() == pytest.approx(full.item(), rel=0.05)


def test_multibit_quantizer_initialises_each_bit_lazily_and_keeps_steps_apart():
    quant = MultiBitLSQ((2, 4), signed=False, per_sample=True)
    x = torch.rand(8, 3, 4, 4)
    assert not quant.initialized.any()
    quant(x, 4)
    assert quant.initialized.tolist() == [False, True]
    assert quant.step(4).item() == pytest.approx(mse_init_steps(x, [(0, 15)])[0].item())
    before = quant.step(4).item()
    quant(x * 10, 4)  # already initialised: not re-fitted
    assert quant.step(4).item() == before
    quant(x, 2)
    assert quant.initialized.all() and quant.step(2).item() != quant.step(4).item()
    assert quant(x, None) is x


def test_only_the_active_bit_step_gets_a_gradient():
    quant = MultiBitLSQ((2, 3, 4), signed=True, per_sample=False)
    w = torch.randn(16, 8, requires_grad=True)
    quant(w, 3).sum().backward()
    assert quant.step(3).grad is not None
    assert quant.step(2).grad is None and quant.step(4).grad is None


def test_gradient_scale_counts_per_sample_features_for_activations():
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    act = MultiBitLSQ((4,), signed=False, per_sample=True)
    act(x, 4)  # initialise
    act.step(4).grad = None
    act(x, 4).sum().backward()
    g = 1 / math.sqrt(3 * 4 * 4 * 15)
    expected = analytic_step_grad(x, act.step(4).detach(), 0, 15, g, torch.ones_like(x))
    # the fused backward takes the sum as a difference of two large dot products: float32 rounding
    # of those products, not of the result, bounds the error (n * eps per sum of n terms, two sums)
    rounding = 2 * x.numel() * torch.finfo(torch.float32).eps * g * float((x / act.step(4).detach()).abs().sum())
    assert act.step(4).grad.item() == pytest.approx(expected.item(), rel=1e-5, abs=rounding)


def test_initialised_flags_survive_state_dict_round_trip():
    a = MultiBitLSQ((2, 4), signed=True, per_sample=False)
    a(torch.randn(10, 10), 2)
    b = MultiBitLSQ((2, 4), signed=True, per_sample=False)
    b.load_state_dict(a.state_dict())
    b(torch.randn(10, 10) * 100, 2)  # must not re-initialise
    assert b.step(2).item() == a.step(2).item()


def _quantize_and_consume(w, step, inp, reuse):
    """One forward + backward where the quantized weight feeds a single op (as in a layer)."""
    out = lsq_quantize(w, step, -8, 7, 0.1, reuse)
    torch.nn.functional.linear(inp, out).square().sum().backward()
    return out


def test_reused_output_buffers_give_the_same_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    inp = torch.randn(5, 12, generator=gen)
    w0 = torch.randn(7, 12, generator=gen)
    reuse, buffers = OutputReuse(), []
    for step_value in (0.3, 0.2, 0.25):
        got_w, got_s = w0.clone().requires_grad_(), torch.tensor(step_value, requires_grad=True)
        want_w, want_s = w0.clone().requires_grad_(), torch.tensor(step_value, requires_grad=True)
        got = _quantize_and_consume(got_w, got_s, inp, reuse)
        want = _quantize_and_consume(want_w, want_s, inp, None)
        buffers.append(reuse.buffer)
        assert got.data_ptr() == reuse.buffer.data_ptr()
        assert torch.equal(got, want) and torch.equal(got_w.grad, want_w.grad) and torch.equal(got_s.grad, want_s.grad)
    assert buffers[1] is buffers[2]  # after a backward the next forward writes the same buffer again


def test_interleaved_forwards_and_backwards_do_not_share_a_buffer():
    """Forward A, forward B, backward A, forward C, backward B, backward C: no forward may write
    into an output whose backward has not run."""
    gen = torch.Generator().manual_seed(1)
    inp, w0 = torch.randn(5, 12, generator=gen), torch.randn(7, 12, generator=gen)
    grads = []
    for reuse in (OutputReuse(), None):
        w = w0.clone().requires_grad_()
        steps = [torch.tensor(v, requires_grad=True) for v in (0.3, 0.15, 0.2)]
        loss = lambda s: torch.nn.functional.linear(inp, lsq_quantize(w, s, -8, 7, 0.1, reuse)).square().sum()
        a, b = loss(steps[0]), loss(steps[1])
        a.backward()
        c = loss(steps[2])
        b.backward()
        c.backward()
        grads.append([w.grad] + [s.grad for s in steps])
    for got, want in zip(*grads):
        assert torch.equal(got, want)


@pytest.mark.parametrize("reuse", [True, False])
def test_channels_last_weights_keep_their_layout_and_equal_the_contiguous_result(reuse):
    """A channels_last conv weight quantizes to a channels_last output (no layout conversion
    before the conv), with the values and gradients of the contiguous weight."""
    gen = torch.Generator().manual_seed(2)
    inp = torch.randn(2, 6, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    w0 = torch.randn(8, 6, 3, 3, generator=gen)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        lender = OutputReuse() if reuse else None
        w = w0.clone().contiguous(memory_format=layout).requires_grad_()
        s = torch.tensor(0.2, requires_grad=True)
        for _ in range(2):  # the second pass writes into the lent buffer
            w.grad = s.grad = None
            q = lsq_quantize(w, s, -8, 7, 0.1, lender)
            assert q.is_contiguous(memory_format=layout)
            torch.nn.functional.conv2d(inp, q).square().sum().backward()
        results.append((q.detach().clone(), w.grad, s.grad))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
