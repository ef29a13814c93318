"""The update step: length-grouped gradient accumulation is the same step as one padded minibatch."""
import copy

import pytest
import torch

import rl_vf.learner as learner
from rl_vf.config import make_config
from rl_vf.learner import length_buckets, score_batch
from rl_vf.trainer import Trainer

# fp32 also on a GPU (where auto means bf16): these compare two computations to 1e-5.
# No critic warm-up: these check what one full update does.
SMALL = dict(hidden_size=32, layers=1, heads=2, intermediate_size=64, threads=1, wandb="disabled", precision="fp32",
             critic_warmup_updates=0)


def test_length_buckets_partition_with_bounded_padding():
    lengths = torch.tensor([10, 3, 9, 5, 2, 20, 6])
    groups = length_buckets(lengths, torch.arange(7))
    assert [lengths[g].tolist() for g in groups] == [[20], [10, 9, 6], [5, 3], [2]]
    assert sorted(torch.cat(groups).tolist()) == list(range(7))
    subset = torch.tensor([6, 1, 4])
    assert [g.tolist() for g in length_buckets(lengths, subset)] == [[6], [1, 4]]  # 3 is half of 6: a new group


def collected(tmp_path, algo):
    cfg = make_config(dict(env="TicTacToe-v0", algo=algo, episodes_per_update=48, num_envs=48, seed=1, **SMALL))
    t = Trainer(cfg, str(tmp_path))
    _, batch = t.collect_batch()
    lengths = batch.attention_mask.sum(1)
    assert len(length_buckets(lengths, torch.arange(len(batch), device=t.device))) > 1  # early episodes vary in length
    return t, batch, lengths


def test_score_batch_matches_one_full_forward(tmp_path):
    t, batch, lengths = collected(tmp_path, "ppo")
    with torch.no_grad():
        full = t.policy.score(batch.tokens, batch.attention_mask)
    actions, rows = batch.action_mask.bool(), torch.arange(len(batch))
    for tokens in (1 << 20, int(lengths.min())):  # groups of 8, or one episode at a time
        grouped = score_batch(t.policy, batch, lengths, chunk=8, tokens=tokens)
        for key in ("logprobs", "values"):  # the action tokens' alone; the rest is 0
            assert torch.allclose(grouped[key][actions], full[key][actions], atol=1e-5), key
            assert not grouped[key][~actions].any()
        last = lengths - 1  # the value after each row's last token (the bootstrap of a truncated episode)
        assert torch.allclose(grouped["next_value"][rows, last], full["next_value"][rows, last], atol=1e-5)


@pytest.mark.parametrize("env_kwargs, cfg_kwargs", [
    ({}, {"critic": "separate"}),  # a fused causal forward, a critic of its own
    ({}, {"attention_window": 5, "constrain_actions": "legal"}),  # a 4-D mask, legal-action sets
])
def test_scoring_the_action_tokens_alone_equals_the_full_forward(tmp_path, env_kwargs, cfg_kwargs):
    """``score(scored=mask)`` runs the last layer and the head only where the action tokens are read:
    the same logprobs, values, entropies and bootstrap values as the full forward there, and the same
    gradients of a loss on them."""
    cfg = make_config(dict(env="TicTacToe-v0", algo="ppo", episodes_per_update=24, num_envs=24, seed=3,
                           env_kwargs=env_kwargs, **{**SMALL, "layers": 2}, **cfg_kwargs))
    t = Trainer(cfg, str(tmp_path))
    _, batch = t.collect_batch()
    with torch.no_grad():  # a value head away from its zero init, so values differ by position
        t.policy.value_head.weight.normal_()
    mask, rows, last = batch.action_mask, torch.arange(len(batch)), batch.attention_mask.sum(1) - 1
    results = []
    for scored in (None, mask):
        t.policy.zero_grad(set_to_none=True)
        out = t.policy.score(batch.tokens, batch.attention_mask, with_entropy=True, legal=batch.legal(slice(None)), scored=scored)
        loss = ((out["logprobs"] + out["entropy"] + out["values"]) * mask).sum() + out["next_value"][rows, last].sum()
        loss.backward()
        picked = {k: out[k][mask.bool()] for k in ("logprobs", "values", "entropy")}
        picked["next_value"] = out["next_value"][rows, last]
        results.append((picked, {n: p.grad.clone() for n, p in t.policy.named_parameters() if p.grad is not None}))
    (full, full_grads), (only, only_grads) = results
    for key in full:
        torch.testing.assert_close(only[key], full[key], atol=1e-5, rtol=1e-5, msg=key)
    assert full_grads.keys() == only_grads.keys() and any("critic" in n for n in full_grads) == (cfg.critic == "separate")
    for name in full_grads:
        torch.testing.assert_close(only_grads[name], full_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def same_step_twice(t, batch, change) -> tuple[dict, dict]:
    """``t.update(batch)`` twice from the same state, the second time after ``change()``; asserts that
    both leave the same parameters and returns both steps' stats."""
    state = copy.deepcopy((t.policy.state_dict(), t.learner.optimizer.state_dict(), t.generator.get_state()))
    first = t.update(batch).stats
    after_first = copy.deepcopy(t.policy.state_dict())
    t.policy.load_state_dict(state[0])
    t.learner.optimizer.load_state_dict(state[1])
    t.generator.set_state(state[2])
    change()
    second = t.update(batch).stats
    for name, value in t.policy.state_dict().items():
        assert torch.allclose(value, after_first[name], atol=1e-6), name
    return first, second


def test_grouped_update_equals_one_padded_minibatch(tmp_path, monkeypatch):
    for algo in ("ppo", "reinforce"):
        t, batch, _ = collected(tmp_path / algo, algo)
        t.cfg.epochs, t.cfg.minibatch_size = 1, len(batch)  # exactly one optimiser step
        grouped, padded = same_step_twice(
            t, batch, lambda: monkeypatch.setattr(learner, "length_buckets", lambda lengths, idx: [idx]))
        monkeypatch.undo()
        for key in ("loss/pg", "loss/entropy", "ppo/approx_kl"):
            assert abs(grouped[key] - padded[key]) < 1e-5, (algo, key)


def test_a_token_budget_splits_the_update_into_parts_with_the_same_step(tmp_path):
    """update_tokens bounds each forward/backward pass (long transcripts split into one-row parts);
    the accumulated gradients, and so the step and its losses, equal the unsplit update's."""
    for algo in ("ppo", "reinforce"):
        t, batch, lengths = collected(tmp_path / algo, algo)
        t.cfg.epochs, t.cfg.minibatch_size = 1, len(batch)
        shortest = int(lengths.min())  # a budget below every group's longest: one episode per part
        parts = list(learner.minibatch_parts(lengths, batch.action_mask, torch.arange(len(batch)), shortest))
        assert all(len(rows) == 1 for (rows, _), _ in parts) and len(parts) == len(batch)
        assert float(sum(w for _, w in parts)) == pytest.approx(1.0)
        unsplit, split = same_step_twice(t, batch, lambda: setattr(t.cfg, "update_tokens", shortest))
        for key in ("loss/pg", "loss/entropy", "ppo/approx_kl"):
            assert abs(unsplit[key] - split[key]) < 1e-5, (algo, key)


def test_one_step_update_without_critic_skips_scoring_and_steps_the_same(tmp_path, monkeypatch):
    t, batch, _ = collected(tmp_path, "reinforce")
    t.cfg.epochs, t.cfg.minibatch_size = 1, len(batch)
    assert not t.learner.scores_before_update(len(batch), t.algo)
    assert t.learner.scores_before_update(len(batch) + 1, t.algo)  # two minibatches: the second needs the old log-probs
    t.cfg.epochs = 2
    assert t.learner.scores_before_update(len(batch), t.algo)
    t.cfg.epochs = 1
    reused, scored = same_step_twice(
        t, batch, lambda: monkeypatch.setattr(t.learner, "scores_before_update", lambda batch_size, algo: True))
    for key in ("loss/pg", "loss/entropy", "ppo/approx_kl", "ppo/clipfrac"):
        assert abs(reused[key] - scored[key]) < 1e-5, key
    ppo, _, _ = collected(tmp_path / "ppo", "ppo")
    ppo.cfg.epochs, ppo.cfg.minibatch_size = 1, len(batch)
    assert ppo.learner.scores_before_update(len(batch), ppo.algo)  # the critic's values feed GAE


def test_bf16_precision_trains_on_cpu(tmp_path):
    """precision=bf16 (auto's choice on CUDA) through a real update: finite losses, parameters move."""
    cfg = make_config(dict(SMALL, env="TicTacToe-v0", episodes_per_update=32, num_envs=32, precision="bf16", device="cpu"))
    t = Trainer(cfg, str(tmp_path))
    assert t.policy.autocast_dtype == torch.bfloat16
    before = [p.detach().clone() for p in t.policy.parameters()]
    _, batch = t.collect_batch()
    stats = t.update(batch).stats
    assert all(torch.isfinite(torch.tensor(stats[k])) for k in ("loss/pg", "loss/vf", "loss/entropy"))
    assert any(not torch.equal(a, b) for a, b in zip(before, t.policy.parameters()))
    assert all(p.dtype == torch.float32 for p in t.policy.parameters())  # fp32 master weights


def test_a_loaded_model_keeps_its_attention_window_and_the_config_says_so(tmp_path):
    windowed = Trainer(make_config(dict(env="TicTacToe-v0", attention_window=8, **SMALL)), str(tmp_path / "a"))
    assert windowed.policy.attention_window == 8
    windowed.policy.save_pretrained(str(tmp_path / "model"), windowed.tokenizer)
    cfg = make_config(dict(env="TicTacToe-v0", model=str(tmp_path / "model"), **SMALL))
    assert cfg.attention_window == 0
    loaded = Trainer(cfg, str(tmp_path / "b"))
    assert loaded.policy.attention_window == 8 and cfg.attention_window == 8  # config.yaml will record 8


def test_memory_estimate_by_hand():
    from rl_vf.policy import TinyConfig, load_policy
    from rl_vf.trainer import memory_estimate

    policy, _ = load_policy("tiny", tiny=TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64))
    m = memory_estimate(policy, make_config({"kl_coef": 0.1}), rows=8)
    # 1 layer x (keys, values) x 2 heads x 16 dims x 4 bytes per token and row, for 1,000 tokens and 8 rows.
    assert m["kv_cache_per_1k_tokens"] == pytest.approx(1 * 2 * 2 * 16 * 4 * 1000 * 8 / 2**20)
    weights = sum(p.numel() for p in policy.parameters()) * 4 / 2**20  # all fp32 and trainable
    assert m["weights"] == pytest.approx(weights) and m["gradients"] == pytest.approx(weights)
    assert m["adam"] == pytest.approx(2 * weights) and 0 < m["reference"] < weights
    assert memory_estimate(policy, make_config({"kl_coef": 0.0}), rows=8)["reference"] == 0.0
    sharded = memory_estimate(policy, make_config({"kl_coef": 0.1}), rows=8, shards=4)  # FSDP over 4 processes
    assert sharded["gradients"] == pytest.approx(weights / 4) and sharded["adam"] == pytest.approx(weights / 2)
    assert sharded["weights"] == pytest.approx(weights)  # gathered whole for the rollouts
