"""The cached multi-turn engine against a full recompute of the same transcripts."""
import gymnasium as gym
import pytest
import torch

from rl_vf.engine import RolloutBatch, RolloutEngine
from rl_vf.policy import TinyConfig, load_policy


class CountingEnv(gym.Env):
    """Observations of varying length, episodes of varying length: stresses padding and refills."""

    def __init__(self):
        self.observation_space = gym.spaces.Text(64)
        self.action_space = gym.spaces.Text(8)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.turns = int(self.np_random.integers(1, 6))
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return "q" * int(self.np_random.integers(1, 9)) + f"{self.t}>"

    def step(self, action):
        self.t += 1
        done = self.t >= self.turns
        reward = float(action.strip() == str(self.t))
        return self._obs(), reward, done, False, {"invalid_action": False, "success": reward > 0}


@pytest.fixture(scope="module")
def policy_and_tokenizer():
    torch.manual_seed(0)
    policy, tok = load_policy("tiny", seed=0, tiny=TinyConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64))
    # Random (not zero) value head so values are checked too.
    torch.nn.init.normal_(policy.value_head.weight)
    return policy.eval(), tok


@pytest.mark.parametrize("num_envs,max_tokens", [(4, 3), (7, 5), (32, 4)])
def test_cached_rollout_matches_full_recompute(policy_and_tokenizer, num_envs, max_tokens):
    policy, tok = policy_and_tokenizer
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=num_envs, max_action_tokens=max_tokens)
    seeds = list(range(40))
    episodes = engine.collect(seeds, torch.Generator().manual_seed(1))
    assert [e.seed for e in episodes] == seeds  # every episode, in order, including refilled rows
    turns = [sum(1 for a, b in zip([0] + e.action_mask, e.action_mask) if b and not a) for e in episodes]
    assert max(turns) >= 4 and min(turns) == 1
    batch = RolloutBatch.from_episodes(episodes, tok.pad_token_id)
    with torch.no_grad():
        full = policy.score(batch.tokens, batch.attention_mask)
    m = batch.action_mask.bool()
    assert m.sum() > 100
    torch.testing.assert_close(full["logprobs"][m], batch.sample_logprobs[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(full["values"][m], batch.sample_values[m], atol=1e-5, rtol=0)


def test_rewards_sit_on_last_action_token(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=3, max_action_tokens=2)
    for e in engine.collect(list(range(10)), torch.Generator().manual_seed(0)):
        mask = e.action_mask
        last_of_turn = [i for i in range(len(mask)) if mask[i] and (i + 1 == len(mask) or not mask[i + 1])]
        assert all(e.rewards[i] == 0 for i in range(len(mask)) if i not in last_of_turn)
        assert sum(e.rewards) == pytest.approx(e.ret)
        assert e.tokens[0] == tok.bos_token_id and mask[0] == 0


def test_refills_compact_the_cache_and_stay_exact(policy_and_tokenizer, monkeypatch):
    """Many short episodes per row: the cache must be compacted, and results stay exact."""
    import rl_vf.engine as engine_mod

    policy, tok = policy_and_tokenizer
    widths = []
    real = engine_mod._compact

    def spy(attn, cache):
        attn, cache = real(attn, cache)
        widths.append(attn.shape[1])
        return attn, cache

    monkeypatch.setattr(engine_mod, "_compact", spy)
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=5, max_action_tokens=3)
    episodes = engine.collect(list(range(60)), torch.Generator().manual_seed(2))
    longest = max(len(e.tokens) for e in episodes)
    assert max(widths) < 3 * longest  # without compaction it would grow to ~12 episodes' worth
    batch = RolloutBatch.from_episodes(episodes, tok.pad_token_id)
    with torch.no_grad():
        full = policy.score(batch.tokens, batch.attention_mask)
    m = batch.action_mask.bool()
    torch.testing.assert_close(full["logprobs"][m], batch.sample_logprobs[m], atol=1e-5, rtol=0)
    torch.testing.assert_close(full["values"][m], batch.sample_values[m], atol=1e-5, rtol=0)


def test_action_constraint_is_the_policy_distribution(policy_and_tokenizer):
    """With allowed tokens set, sampling only emits them and the recompute scores the same."""
    from rl_vf.engine import action_token_mask

    policy, tok = policy_and_tokenizer
    allowed = action_token_mask(tok, "0123456789")
    policy.allowed_tokens = allowed
    try:
        engine = RolloutEngine(policy, tok, CountingEnv, num_envs=6, max_action_tokens=3)
        episodes = engine.collect(list(range(20)), torch.Generator().manual_seed(3))
        batch = RolloutBatch.from_episodes(episodes, tok.pad_token_id)
        m = batch.action_mask.bool()
        assert allowed[batch.tokens[m]].all()
        with torch.no_grad():
            full = policy.score(batch.tokens, batch.attention_mask, with_entropy=True)
        torch.testing.assert_close(full["logprobs"][m], batch.sample_logprobs[m], atol=1e-5, rtol=0)
        assert torch.isfinite(full["entropy"]).all() and (full["entropy"][m] <= torch.log(allowed.sum()) + 1e-5).all()
    finally:
        policy.allowed_tokens = None
