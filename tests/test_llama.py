"""rl_vf.llama's lean forward computes what Hugging Face's LlamaModel computes."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rl_vf import llama
from rl_vf.policy import cache_kwarg, enable_checkpointing, growing_cache, trunk_hidden


def make_trunk(**overrides):
    config = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=256, rope_theta=500.0)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**config, **overrides})).base_model.eval()


def hf_hidden(trunk, ids, mask=None, positions=None, cache=None):
    return trunk(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=cache is not None,
                 **{cache_kwarg(trunk): cache}).last_hidden_state


@pytest.mark.parametrize("kv_heads", [4, 2])  # 2: grouped-query attention
def test_full_forward_matches_hugging_face(kv_heads):
    trunk = make_trunk(num_key_value_heads=kv_heads)
    assert llama.supports(trunk)
    ids = torch.randint(0, 50, (3, 11))
    lengths = torch.tensor([11, 7, 4])
    mask = torch.arange(11)[None, :] < lengths[:, None]  # right padding, as rl_vf's batches
    real = mask[..., None].expand(-1, -1, 32)
    torch.testing.assert_close(llama.forward(trunk, ids), hf_hidden(trunk, ids), atol=1e-5, rtol=0)
    torch.testing.assert_close(llama.forward(trunk, ids, mask.long())[real], hf_hidden(trunk, ids, mask.long())[real],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("window", [3, 5])
def test_a_window_on_right_padded_rows_runs_by_bands_and_equals_the_window_mask(kv_heads, window):
    """rl_vf's attention window on training batches (tokens, then padding): the lean forward attends
    by blocks of ``window`` columns (``band_attention``), not through a (B, 1, T, T) mask; it equals the
    window's explicit mask (``visible``) at every real token, also where the last layer computes a few
    query columns alone, and for lengths that are not a multiple of the window. Outputs in fp32; the
    gradients in fp64, where the two agree to rounding (in fp32 SDPA's kernel sums the blocks in
    another order: ~1e-4 of the largest gradient)."""
    trunk = make_trunk(num_key_value_heads=kv_heads)
    ids = torch.randint(0, 50, (3, 23))
    right = torch.arange(23)[None, :] < torch.tensor([23, 13, window - 1])[:, None]
    queries = torch.tensor([[0, 9, 22], [4, 12, 12], [0, 1, 1]])
    real_queries = torch.tensor([[True] * 3, [True] * 3, [True, True, False]])

    def run(mask, window_arg, queries=None):
        trunk.zero_grad()
        out = llama.forward(trunk, ids, mask, window=window_arg, queries=queries)
        out = out[right] if queries is None else out[real_queries]
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in trunk.parameters()]

    for q in (None, queries):
        banded, masked = run(right.long(), window, q)[0], run(llama.visible(right, 23, window), 0, q)[0]
        torch.testing.assert_close(banded, masked, atol=1e-5, rtol=0)
        trunk.double()
        banded, banded_grads = run(right.long(), window, q)
        for a, b in zip(banded_grads, run(llama.visible(right, 23, window), 0, q)[1]):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        trunk.float()
    assert not torch.allclose(banded.float(), run(right.long(), 0, queries)[0], atol=1e-3)  # the window matters


def test_band_attention_equals_a_banded_mask():
    """Against SDPA with the band as an explicit mask: T shorter than, equal to and longer than the
    band, not a multiple of it (the first block sees no block before it: zero-padded keys)."""
    torch.manual_seed(0)
    for t, band in ((2, 4), (4, 4), (9, 4), (17, 8)):
        q, k, v = (torch.randn(2, 3, t, 8) for _ in range(3))
        behind = torch.arange(t)[:, None] - torch.arange(t)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=(behind >= 0) & (behind < band))
        torch.testing.assert_close(llama.band_attention(q, k, v, band, 8 ** -0.5), expected, atol=1e-6, rtol=0)


def test_right_padded_batches_take_the_causal_kernel_and_other_masks_the_mask(monkeypatch):
    """rl_vf's training batches (tokens, then padding) run SDPA's causal kernel; a mask with a hole
    (or left padding) keeps the explicit mask. Both match Hugging Face on the real tokens."""
    trunk = make_trunk()
    ids = torch.randint(0, 50, (3, 9))
    right = torch.arange(9)[None, :] < torch.tensor([9, 6, 2])[:, None]
    holed = right.clone()
    holed[0, 3] = False
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs["attn_mask"] is None and kwargs["is_causal"])
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(llama.F, "scaled_dot_product_attention", spy)
    for mask, causal in ((right, True), (holed, False), (right.flip(1), False)):
        calls.clear()
        assert llama.right_padded(mask) == causal
        real = mask[..., None].expand(-1, -1, 32)
        ours = llama.forward(trunk, ids, mask.long())[real]
        assert calls == [causal] * 2  # each layer (F is torch's: Hugging Face's calls would count too)
        torch.testing.assert_close(ours, hf_hidden(trunk, ids, mask.long())[real], atol=1e-5, rtol=0)


def test_cached_forward_matches_hugging_face():
    """A prefill and then one-token steps, with per-row positions and masked columns (the engine's
    use: a row whose earlier column is hidden), into the same kind of cache for both."""
    trunk = make_trunk()
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 2] = False  # row 1 does not see column 2
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 1, 2, 3, 4]])
    ours, theirs = growing_cache(8), growing_cache(8)
    out = llama.forward(trunk, ids, mask, positions, ours)
    ref = hf_hidden(trunk, ids, mask, positions, theirs)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, [0, 1, 3, 4, 5]], ref[1, [0, 1, 3, 4, 5]], atol=1e-5, rtol=0)
    for step in range(3):
        ids = torch.randint(0, 50, (2, 1))
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], 1)
        positions = positions[:, -1:] + 1
        torch.testing.assert_close(llama.forward(trunk, ids, mask, positions, ours),
                                   hf_hidden(trunk, ids, mask, positions, theirs), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.layers[0].keys, theirs.layers[0].keys, atol=1e-5, rtol=0)


def test_gradients_match_hugging_face():
    trunk = make_trunk()
    twin = copy.deepcopy(trunk)
    ids = torch.randint(0, 50, (2, 9))
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    (llama.forward(trunk, ids, mask)[mask.bool()] ** 2).sum().backward()
    (hf_hidden(twin, ids, mask)[mask.bool()] ** 2).sum().backward()
    for (name, a), b in zip(trunk.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_other_models_run_their_own_forward():
    biased = make_trunk(attention_bias=True)
    assert not llama.supports(biased)
    ids = torch.randint(0, 50, (2, 5))
    torch.testing.assert_close(trunk_hidden(biased, ids), hf_hidden(biased, ids))


def test_gradient_checkpointing_recomputes_each_layer_and_gives_the_same_gradients(monkeypatch):
    """With Hugging Face's flag set (``gradient_checkpointing_enable``), the lean forward checkpoints every
    layer where gradients are taken, and not under no_grad (rollouts, which keep their cache)."""
    calls = []
    real = llama.checkpoint
    monkeypatch.setattr(llama, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids = torch.randint(0, 50, (3, 9))
    grads = []
    for on in (False, True):
        trunk = make_trunk().train()
        if on:
            enable_checkpointing(trunk)
            with torch.no_grad():
                llama.forward(trunk, ids)
            assert calls == []  # nothing to recompute without a backward
        llama.forward(trunk, ids).square().sum().backward()
        grads.append({n: p.grad for n, p in trunk.named_parameters()})
    assert len(calls) == 2  # one per layer, in the forward with gradients
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)
