"""The RealDPO loss: formula and signs, and the batched step against the official per-negative loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import lora_transformer

from realdpo.method.losses import dpo_loss, objective, preference_metrics, sft_loss, split_errors
from realdpo.method.reference import DisabledAdapterReference
from realdpo.method.step import ErrorModel, build_inputs, preference_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_signs_on_a_constructed_case():
    ref_w, ref_l = torch.ones(2), torch.ones(2, 3)
    # the policy fits the winner better and the losers worse than the reference: it prefers the winner
    loss, m = dpo_loss(torch.full((2,), 0.9), ref_w, torch.full((2, 3), 1.1), ref_l, beta=10.0)
    assert m["accuracy"] == 1.0 and m["reward_margin"] == pytest.approx(10 / 2 * 0.2)
    assert m["reward_w"] > 0 > m["reward_l"]
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))), rel=1e-6)
    # and the other way round
    loss2, m2 = dpo_loss(torch.full((2,), 1.1), ref_w, torch.full((2, 3), 0.9), ref_l, beta=10.0)
    assert m2["accuracy"] == 0.0 and m2["reward_margin"] == pytest.approx(-1.0)
    assert loss2 > loss
    # at the reference the loss is log 2, the margin zero, and every pair a tie, counted one half
    loss0, m0 = dpo_loss(ref_w, ref_w, ref_l, ref_l, beta=5000.0)
    assert loss0.item() == pytest.approx(math.log(2)) and m0["reward_margin"] == 0 and m0["accuracy"] == 0.5


def test_formula_mean_over_batch_and_negatives():
    g = torch.Generator().manual_seed(0)
    pw, rw = torch.rand(4, generator=g), torch.rand(4, generator=g)
    pl, rl = torch.rand(4, 3, generator=g), torch.rand(4, 3, generator=g)
    beta = 7.0
    loss, m = dpo_loss(pw, rw, pl, rl, beta)
    expect = [-F.logsigmoid(torch.tensor(-beta / 2 * ((pw[b] - rw[b]) - (pl[b, k] - rl[b, k])).item())).item()
              for b in range(4) for k in range(3)]
    assert loss.item() == pytest.approx(sum(expect) / len(expect), rel=1e-6)
    d = (pw - rw)[:, None] - (pl - rl)
    assert m["accuracy"] == pytest.approx((d < 0).float().mean().item())
    assert preference_metrics(pw, rw, pl, rl, beta)["reward_margin"] == pytest.approx((-beta / 2 * d).mean().item(), rel=1e-6)
    # variants and the SFT mixture
    for kind in ("ipo", "hinge"):
        assert dpo_loss(pw, rw, pl, rl, beta, kind)[0].item() >= 0
    err_p, err_r = torch.cat([pw, pl.flatten()]), torch.cat([rw, rl.flatten()])
    assert torch.equal(split_errors(err_p, 4)[1], pl)
    mixed, mm = objective("dpo+sft", err_p, err_r, 4, beta=beta, sft_weight=0.5)
    assert mixed.item() == pytest.approx(loss.item() + 0.5 * sft_loss(pw).item(), rel=1e-6)
    assert mm["loss_sft"] == pytest.approx(pw.mean().item())
    assert objective("sft", pw, None, 4, beta=beta)[0].item() == pytest.approx(pw.mean().item())


def _batch(spec, b=2, k=3, seed=0):
    frames, height, width = spec.default_size()
    with torch.no_grad():
        shape = spec.encode_videos(torch.zeros(1, frames, 3, height, width)).shape[1:]
    g = torch.Generator().manual_seed(seed)
    winners = torch.randn(b, *shape, generator=g)
    losers = torch.randn(b, k, *shape, generator=g)
    noise = torch.randn(b, *shape, generator=g)
    t = spec.sample_timesteps(b, 0.0, 0.5, generator=g)
    cond = spec.encode_prompts([f"prompt {i}" for i in range(b)])
    return winners, losers, noise, t, cond


def _grads(tr):
    out = {n: p.grad.detach().clone() for n, p in tr.named_parameters() if p.grad is not None}
    tr.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_batched_step_equals_official_per_negative_loop(family, tiny_spec):
    # float64 weights: in float32 the batch size changes the matmul rounding (~1e-7), which beta then amplifies
    spec = tiny_spec(family, torch.float64)
    tr = lora_transformer(spec)
    tr.zero_grad(set_to_none=True)
    winners, losers, noise, t, cond = _batch(spec)
    b, k = losers.shape[:2]
    beta = 500.0
    policy, ref = ErrorModel(spec, tr), DisabledAdapterReference(tr)

    metrics = preference_step(policy, ref, spec, build_inputs(winners, losers, cond, noise, t), kind="dpo", beta=beta)
    batched = _grads(tr)

    # the official loop: for every negative, policy and reference each on winner and loser, one backward each
    total, accs, margins = 0.0, [], []
    for j in range(k):
        ew, el = policy(winners, noise, t, cond), policy(losers[:, j], noise, t, cond)
        rw, rl = ref.errors(spec, winners, noise, t, cond), ref.errors(spec, losers[:, j], noise, t, cond)
        loss_j, m_j = dpo_loss(ew, rw, el[:, None], rl[:, None], beta)
        (loss_j / k).backward()
        total += loss_j.item() / k
        accs.append(m_j["accuracy"])
        margins.append(m_j["reward_margin"])
    official = _grads(tr)

    assert metrics["loss"] == pytest.approx(total, abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(sum(accs) / k)
    assert metrics["reward_margin"] == pytest.approx(sum(margins) / k, abs=1e-5)
    assert batched.keys() == official.keys() and batched
    for n in batched:
        torch.testing.assert_close(batched[n], official[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["dpo", "dpo+sft", "ipo", "hinge", "sft"])
def test_chunked_gradient_equals_unchunked(kind, tiny_spec):
    spec = tiny_spec("cogvideox", torch.float64)
    tr = lora_transformer(spec)
    tr.zero_grad(set_to_none=True)
    winners, losers, noise, t, cond = _batch(spec, seed=3)
    inputs = build_inputs(winners, None if kind == "sft" else losers, cond, noise, t)
    policy, ref = ErrorModel(spec, tr), DisabledAdapterReference(tr)
    full = preference_step(policy, ref, spec, inputs, kind=kind, beta=500.0)
    g_full = _grads(tr)
    # streamed chunks (1 row, 3 rows across clips) and kept graphs, each without and with gradient checkpointing
    for checkpointing in (False, True):
        if checkpointing:
            tr.enable_gradient_checkpointing()
            tr.train()
        # (chunk, keep_graph, loser_grads): the last sets each loser row's gradient aside (no winner re-pass)
        params = [p for p in tr.parameters() if p.requires_grad]
        for chunk, keep_graph, aside in ((1, False, None), (3, False, None), (2, True, None), (1, False, params)):
            chunked = preference_step(policy, ref, spec, inputs, kind=kind, beta=500.0, chunk_size=chunk,
                                      keep_graph=keep_graph, loser_grads=aside)
            g = _grads(tr)
            assert chunked == pytest.approx(full, abs=1e-6), (chunk, keep_graph, checkpointing)
            for n in g_full:
                torch.testing.assert_close(g[n], g_full[n], rtol=1e-5, atol=1e-7)
    tr.disable_gradient_checkpointing()


def test_loser_grads_run_each_row_once_and_keep_earlier_gradients(tiny_spec):
    """With the loser rows' gradients set aside, a step forwards each of its B*(K+1) rows once, all with
    gradients (the plain streamed order forwards the B winners a second time without), and adds to gradients
    already accumulated (an earlier micro-batch) instead of replacing them."""
    spec = tiny_spec("cogvideox", torch.float64)
    tr = lora_transformer(spec)
    params = [p for p in tr.parameters() if p.requires_grad]
    winners, losers, noise, t, cond = _batch(spec, seed=5)
    inputs = build_inputs(winners, losers, cond, noise, t)
    error_model, ref = ErrorModel(spec, tr), DisabledAdapterReference(tr)
    calls = []

    def policy(*a):
        calls.append((a[0].shape[0], torch.is_grad_enabled()))
        return error_model(*a)

    preference_step(policy, ref, spec, inputs, kind="dpo", beta=500.0, chunk_size=1)
    once = _grads(tr)
    n = len(inputs)
    assert sorted(calls) == sorted([(1, True)] * n + [(1, False)] * inputs.batch_size)
    calls.clear()
    for _ in range(2):  # two micro-batches accumulate
        preference_step(policy, ref, spec, inputs, kind="dpo", beta=500.0, chunk_size=1, loser_grads=params)
    assert calls == [(1, True)] * (2 * n)
    twice = _grads(tr)
    assert once.keys() == twice.keys() and once
    for name in once:
        torch.testing.assert_close(twice[name], 2 * once[name], rtol=1e-5, atol=1e-7)


def test_streamed_chunks_hold_one_rows_activations(tiny_spec):
    """Peak tensor memory of one step (every tensor made during it, weights excluded): streamed chunks of one row
    hold one row's activations, kept graphs all K+1 rows'; with checkpointing only checkpoints are kept."""
    from realdpo.memory import TensorTracker

    spec = tiny_spec("cogvideox")
    tr = lora_transformer(spec)
    frames, height, width = spec.default_size()
    with torch.no_grad():  # a larger latent than the default, so activations dwarf the fixed costs
        shape = spec.encode_videos(torch.zeros(1, frames, 3, 2 * height, 2 * width)).shape[1:]
    g = torch.Generator().manual_seed(0)
    inputs = build_inputs(torch.randn(1, *shape, generator=g), torch.randn(1, 3, *shape, generator=g),
                          spec.encode_prompts(["a"]), torch.randn(1, *shape, generator=g), torch.tensor([200]))
    policy, ref = ErrorModel(spec, tr), DisabledAdapterReference(tr)

    def peak(**kw) -> int:
        def step():
            preference_step(policy, ref, spec, inputs, kind="dpo", beta=500.0, **kw)
            tr.zero_grad(set_to_none=True)
        step()  # warm-up: lazily built buffers (rotary tables) are not the step's
        with TensorTracker() as tracker:
            step()
        return tracker.peak

    kept, streamed = peak(chunk_size=1, keep_graph=True), peak(chunk_size=1)
    tr.enable_gradient_checkpointing()
    tr.train()
    kept_ckpt, streamed_ckpt = peak(chunk_size=1, keep_graph=True), peak(chunk_size=1)
    tr.disable_gradient_checkpointing()
    assert streamed < 0.45 * kept  # one row of four, plus what every path holds
    assert streamed_ckpt < kept_ckpt and streamed_ckpt < 0.8 * streamed


def test_step_inputs_hand_each_row_its_clips_inputs():
    """take() gives every row of [x_w, x_l] its clip's noise, timestep and conditioning, for any slicing."""
    g = torch.Generator().manual_seed(0)
    b, k = 2, 3
    winners, losers = torch.randn(b, 2, 3, generator=g), torch.randn(b, k, 2, 3, generator=g)
    noise, t, emb = torch.randn(b, 2, 3, generator=g), torch.tensor([5, 7]), torch.randn(b, 4, 8, generator=g)
    clip = torch.tensor([0, 1, 0, 0, 0, 1, 1, 1])
    cases = [(build_inputs(winners, losers, {"prompt_embeds": emb}, noise, t),
              (torch.cat([winners, losers.flatten(0, 1)]), noise[clip], t[clip], emb[clip])),
             (build_inputs(winners, None, {"prompt_embeds": emb}, noise, t), (winners, noise, t, emb))]
    for inputs, expect in cases:
        n = len(expect[0])
        assert len(inputs) == n
        for size in range(1, n + 1):
            for start in range(0, n, size):
                sl = slice(start, min(start + size, n))
                latents, eps, ts, cond = inputs.take(sl)
                for got, want in zip((latents, eps, ts, cond["prompt_embeds"]), expect):
                    assert torch.equal(got, want[sl])
        assert all(torch.equal(a, w) for a, w in zip(inputs.take(slice(None))[:3], expect))


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    """tiny_spec(family) -> a freshly loaded spec of a tiny random-weight pipeline (saved once per module)."""
    from realdpo.models import load_spec
    from realdpo.models.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny")

    def make(family: str, dtype: torch.dtype = torch.float32):
        path = root / family
        if not path.exists():
            save_tiny_pipeline(family, "t2v", path)
        spec = load_spec(path, dtype=dtype)
        spec.transformer.to(dtype)  # also the parameters diffusers keeps in fp32 (Wan's scale_shift_table)
        return spec

    return make
