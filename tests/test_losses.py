"""Loss terms (rl_vf/algos/losses.py): hand-computed values, gradients, and masking on a real policy."""
import math

import pytest
import torch

from rl_vf.algos.losses import kl_to_reference, masked_mean, policy_loss, value_loss, whiten
from rl_vf.policy import TinyConfig, load_policy


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------- masked_mean / whiten


def test_masked_mean_by_hand():
    x = t([[1.0, 2.0, 100.0], [3.0, -50.0, 6.0]])
    mask = t([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 3 + 6) / 4)
    assert masked_mean(x, mask.bool()).item() == pytest.approx(3.0)
    # Empty mask: 0, not NaN.
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_whiten_mean0_var1_over_mask_zero_elsewhere():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 12, generator=g) * 3.0 + 5.0
    mask = (torch.rand(4, 12, generator=g) > 0.4).float()
    w = whiten(x, mask)
    sel = w[mask == 1]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert sel.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(w[mask == 0], torch.zeros(int((mask == 0).sum())))
    # Entries outside the mask do not influence the result.
    x2 = x.clone()
    x2[mask == 0] = 1e4
    assert torch.allclose(whiten(x2, mask), w, atol=1e-6)
    # Hand case: [1, 3] over the mask -> [-1, 1].
    assert torch.allclose(whiten(t([[1.0, 9.0, 3.0]]), t([[1, 0, 1]])), t([[-1.0, 0.0, 1.0]]), atol=1e-4)


# ---------------------------------------------------------------- policy loss


def test_clipped_surrogate_by_hand():
    clip = 0.2
    ratios = [1.1, 1.5, 1.5, 0.5, 0.5, 3.0]
    advs = [1.0, 1.0, -1.0, -2.0, 2.0, 5.0]
    mask = t([[1, 1, 1, 1, 1, 0]])  # the last entry (huge ratio) is masked out
    old = t([[-1.0, -2.0, -0.5, -1.5, -3.0, -0.1]])
    logprobs = (old + torch.log(t([ratios]))).requires_grad_(True)
    adv = t([advs])
    loss, stats = policy_loss(logprobs, old, adv, mask, clip)
    # Per token max(-A r, -A clip(r)):
    #  r=1.1, A=+1: -1.1 (inside the range)
    #  r=1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped)
    #  r=1.5, A=-1: max( 1.5,  1.2) =  1.5 (unclipped, pessimistic)
    #  r=0.5, A=-2: max( 1.0,  1.6) =  1.6 (clipped)
    #  r=0.5, A=+2: max(-1.0, -1.6) = -1.0 (unclipped)
    assert loss.item() == pytest.approx((-1.1 - 1.2 + 1.5 + 1.6 - 1.0) / 5, abs=1e-5)  # -0.04
    assert stats["clipfrac"].item() == pytest.approx(4 / 5)
    k3 = [(r - 1) - math.log(r) for r in ratios[:5]]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 5, abs=1e-6)
    assert stats["approx_kl"].item() > 0
    assert not stats["clipfrac"].requires_grad and not stats["approx_kl"].requires_grad
    # Gradient: -A r / N where the unclipped branch is active, 0 where the clipped one is.
    loss.backward()
    expected = t([[-1.1 / 5, 0.0, 1.5 / 5, 0.0, -1.0 / 5, 0.0]])
    assert torch.allclose(logprobs.grad, expected, atol=1e-6)


def test_first_pass_gradient_is_minus_advantage_over_n_action_tokens():
    g = torch.Generator().manual_seed(1)
    lp = (torch.randn(3, 7, generator=g) - 2.0).requires_grad_(True)
    old = lp.detach().clone()
    mask = t([[0, 1, 1, 0, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0]])
    adv = torch.randn(3, 7, generator=g)
    loss, stats = policy_loss(lp, old, adv, mask, 0.2)
    loss.backward()
    n = mask.sum()
    assert n.item() == 8
    assert torch.allclose(lp.grad, -adv * mask / n, atol=1e-7)
    assert torch.equal(lp.grad[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert loss.item() == pytest.approx(-(adv * mask).sum().item() / 8, abs=1e-6)
    assert stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0


# ---------------------------------------------------------------- value loss


def test_value_loss_clipped_and_unclipped_by_hand():
    values = t([[1.0, 1.0, 0.6, -1.0, 50.0]])
    old = t([[0.5, 0.5, 0.5, 0.0, 0.0]])
    returns = t([[0.0, 2.0, 2.0, -1.0, 0.0]])
    mask = t([[1, 1, 1, 1, 0]])
    # Unclipped squared errors: 1, 1, 1.96, 0 -> 0.5 * 3.96 / 4 = 0.495
    assert value_loss(values, old, returns, mask, None).item() == pytest.approx(0.495, abs=1e-6)
    # clip 0.2: clipped values 0.7, 0.7, 0.6, -0.2 -> errors 0.49, 1.69, 1.96, 0.64
    # max with unclipped: 1, 1.69, 1.96, 0.64 -> 0.5 * 5.29 / 4 = 0.66125
    v = values.clone().requires_grad_(True)
    loss = value_loss(v, old, returns, mask, 0.2)
    assert loss.item() == pytest.approx(0.66125, abs=1e-6)
    loss.backward()
    # d/dv: unclipped branch active -> (v - R)/N; clipped branch active outside range -> 0.
    # entry 0: (1-0)/4 = 0.25; entry 1: clipped active and v outside range -> 0;
    # entry 2: (0.6-2)/4 = -0.35; entry 3: clipped active, outside range -> 0; masked -> 0.
    assert torch.allclose(v.grad, t([[0.25, 0.0, -0.35, 0.0, 0.0]]), atol=1e-6)


# ---------------------------------------------------------------- KL to reference


def test_kl_to_reference():
    g = torch.Generator().manual_seed(2)
    lp = torch.randn(2, 5, generator=g) - 1.0
    mask = t([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    assert kl_to_reference(lp, lp.clone(), mask).item() == 0.0
    ref = lp + 0.3 * torch.randn(2, 5, generator=g)
    assert kl_to_reference(lp, ref, mask).item() > 0
    # Hand case: pi = 0.5, pi_ref = 0.25 -> r = 0.5, k3 = 0.5 - 1 + ln 2 = 0.1931472
    kl = kl_to_reference(t([[math.log(0.5), 0.0]]), t([[math.log(0.25), -9.0]]), t([[1, 0]]))
    assert kl.item() == pytest.approx(0.5 - 1 + math.log(2), abs=1e-6)


# ---------------------------------------------------------------- masks on a real policy


@pytest.fixture(scope="module")
def tiny_policy():
    torch.manual_seed(0)
    policy, tok = load_policy("tiny", seed=0, tiny=TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64))
    # Random value head (the default is zero-initialised), so value gradients are not degenerate.
    with torch.no_grad():
        torch.nn.init.normal_(policy.value_head.weight, std=0.5)
        policy.value_head.bias.fill_(0.1)
    return policy.eval(), tok


def _batch(tok, pad_fill=None):
    """Two transcripts, right-padded: (tokens, attention_mask, action_mask)."""
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    bos = tok.bos_token_id
    # row 0: <bos> "ab" | act "12" | obs "c" | act "3"       (length 7)
    # row 1: <bos> "xy" | act "45" | pad pad                 (length 5)
    row0 = [bos] + enc("ab") + enc("12") + enc("c") + enc("3")
    m0 = [0, 0, 0, 1, 1, 0, 1]
    row1 = [bos] + enc("xy") + enc("45")
    m1 = [0, 0, 0, 1, 1]
    T = len(row0)
    pad = tok.pad_token_id if pad_fill is None else pad_fill
    tokens = torch.tensor([row0, row1 + [pad] * (T - len(row1))])
    attn = torch.tensor([[1] * T, [1] * len(row1) + [0] * (T - len(row1))])
    mask = t([m0, m1 + [0] * (T - len(m1))])
    return tokens, attn, mask


def _losses(policy, tokens, attn, mask, old_lp=None, old_v=None, retain=False):
    out = policy.score(tokens, attn, with_entropy=True)
    lp, v, ent = out["logprobs"], out["values"], out["entropy"]
    if retain:
        for x in (lp, v, ent):
            x.retain_grad()
    old_lp = lp.detach() - 0.05 * mask if old_lp is None else old_lp  # ratio ~1.05, inside clip
    old_v = v.detach() + 0.1 if old_v is None else old_v
    adv = t([[0.3, -0.7, 1.1, 0.9, -1.3, 0.4, 0.8], [-0.2, 0.6, -0.9, 1.2, 0.7, -0.5, 0.5]])
    returns = t([[1.0, -2.0, 0.5, 1.5, -1.0, 2.0, 0.7], [0.4, 0.9, -1.5, 2.5, -0.8, 1.0, 3.0]])
    pg, _ = policy_loss(lp, old_lp, adv, mask, 0.2)
    vf = value_loss(v, old_v, returns, mask, 0.5)
    ent_term = -masked_mean(ent, mask)
    return {"pg": pg, "vf": vf, "ent": ent_term, "lp": lp, "v": v, "entropy": ent, "old_lp": old_lp, "old_v": old_v}


def test_non_action_tokens_get_exactly_zero_gradient(tiny_policy):
    policy, tok = tiny_policy
    tokens, attn, mask = _batch(tok)
    # Capture the per-position logits (output of the LM head) and values (value head output).
    captured = {}

    def keep(name):
        def hook(_module, _inp, output):
            output.retain_grad()
            captured[name] = output

        return hook

    handles = [
        policy.lm.get_output_embeddings().register_forward_hook(keep("logits")),
        policy.value_head.register_forward_hook(keep("values")),
    ]
    try:
        policy.zero_grad(set_to_none=True)
        r = _losses(policy, tokens, attn, mask, retain=True)
        loss = r["pg"] + 0.5 * r["vf"] + 0.01 * r["ent"]
        loss.backward()
    finally:
        for h in handles:
            h.remove()

    off = mask == 0
    on = mask == 1
    # Gradients w.r.t. the per-token scores returned by Policy.score (aligned with tokens).
    for name in ("lp", "v", "entropy"):
        grad = r[name].grad
        assert grad is not None, name
        assert torch.equal(grad[off], torch.zeros(int(off.sum()))), (name, grad)
        assert (grad[on] != 0).all(), (name, grad)

    # Gradients w.r.t. the raw per-position logits / values: position p predicts token p + 1,
    # so it must get gradient iff token p + 1 is an action token.
    next_is_action = torch.zeros_like(mask, dtype=torch.bool)
    next_is_action[:, :-1] = on[:, 1:]
    g_logits = captured["logits"].grad  # (B, T, V)
    g_values = captured["values"].grad.squeeze(-1)  # (B, T)
    assert torch.equal(g_logits[~next_is_action], torch.zeros_like(g_logits[~next_is_action]))
    assert torch.equal(g_values[~next_is_action], torch.zeros_like(g_values[~next_is_action]))
    assert (g_logits[next_is_action].abs().sum(-1) > 0).all()
    assert (g_values[next_is_action] != 0).all()
    # And the parameters do get a gradient.
    assert policy.value_head.weight.grad is not None and policy.value_head.weight.grad.abs().sum() > 0
    policy.zero_grad(set_to_none=True)


def test_padding_tokens_are_invisible(tiny_policy):
    policy, tok = tiny_policy
    tokens, attn, mask = _batch(tok)
    tokens2, attn2, mask2 = _batch(tok, pad_fill=tok.encode("z", add_special_tokens=False)[0])
    assert not torch.equal(tokens, tokens2) and torch.equal(attn, attn2)
    with torch.no_grad():
        a = _losses(policy, tokens, attn, mask)
        b = _losses(policy, tokens2, attn2, mask2, old_lp=a["old_lp"], old_v=a["old_v"])
    for name in ("pg", "vf", "ent"):
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), (name, a[name], b[name])
    # Scores of the real (non-padding) tokens are unchanged too.
    real = attn.bool()
    for name in ("lp", "v", "entropy"):
        assert torch.allclose(a[name][real], b[name][real], atol=1e-5), name
