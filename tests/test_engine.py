"""The cached multi-turn engine against a full recompute of the same transcripts."""
import copy

import gymnasium as gym
import pytest
import torch

from rl_vf.engine import RolloutBatch, RolloutEngine, Start
from rl_vf.llama import visible
from rl_vf.policy import WINDOW_KEY, Critic, TinyConfig, load_policy


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


def assert_matches_recompute(policy, tok, episodes, atol=1e-5) -> torch.Tensor:
    """The engine's sampling-time logprobs and values equal a full recompute of the transcripts;
    returns the action mask of the batch."""
    batch = RolloutBatch.from_episodes(episodes, tok.pad_token_id).to(next(policy.parameters()).device)
    with torch.no_grad():
        full = policy.score(batch.tokens, batch.attention_mask)
    m = batch.action_mask.bool()
    torch.testing.assert_close(full["logprobs"][m], batch.sample_logprobs[m], atol=atol, rtol=0)
    torch.testing.assert_close(full["values"][m], batch.sample_values[m], atol=atol, rtol=0)
    return m


@pytest.fixture(scope="module")
def policy_and_tokenizer():
    torch.manual_seed(0)
    policy, tok = load_policy("tiny", seed=0, tiny=TinyConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64))
    # Random (not zero) value head so values are checked too.
    torch.nn.init.normal_(policy.value_head.weight)
    return policy.eval(), tok


@pytest.fixture(scope="module", params=["shared", "separate"])
def policy_either_critic(request, policy_and_tokenizer):
    """The policy with its shared value head, or with a separate critic whose weights differ from the
    policy's (so a critic cache mixed up with the policy's would show)."""
    policy, tok = policy_and_tokenizer
    if request.param == "shared":
        return policy, tok
    with_critic = copy.deepcopy(policy)
    with_critic.critic = Critic.copy_of(policy)
    noise = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in with_critic.critic.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=noise))
    return with_critic.eval(), tok


# sync_every > 1 and static_decode are the GPU settings: rows that stopped keep decoding padding
# until the next check; the decode step runs on fixed-shape buffers (a CUDA graph there, eager here).
@pytest.mark.parametrize("num_envs,max_tokens,sync_every,static_decode",
                         [(4, 3, 1, False), (7, 5, 1, False), (32, 4, 1, False), (7, 5, 3, False), (32, 4, 8, False),
                          (7, 5, 1, True), (32, 4, 8, True)])
def test_cached_rollout_matches_full_recompute(policy_either_critic, num_envs, max_tokens, sync_every, static_decode):
    policy, tok = policy_either_critic
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=num_envs, max_action_tokens=max_tokens,
                           sync_every=sync_every, static_decode=static_decode)
    seeds = list(range(40))
    episodes = engine.collect(seeds, torch.Generator().manual_seed(1))
    assert [e.seed for e in episodes] == seeds  # every episode, in order, including refilled rows
    turns = [sum(1 for a, b in zip([0] + e.action_mask, e.action_mask) if b and not a) for e in episodes]
    assert max(turns) >= 4 and min(turns) == 1
    m = assert_matches_recompute(policy, tok, episodes)
    assert m.sum() > 100


def test_each_episode_is_reported_once_as_it_ends(policy_and_tokenizer):
    """The progress callback sees every episode once, finished, before collect returns them."""
    policy, tok = policy_and_tokenizer
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=3, max_action_tokens=2)
    seen = []
    episodes = engine.collect(list(range(10)), torch.Generator().manual_seed(0),
                              on_done=lambda e: seen.append((e, len(e.tokens))))
    assert sorted(id(e) for e, _ in seen) == sorted(id(e) for e in episodes)
    assert all(n == len(e.tokens) for e, n in seen)  # complete when reported: nothing was added after


def test_rewards_sit_on_last_action_token(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=3, max_action_tokens=2)
    for e in engine.collect(list(range(10)), torch.Generator().manual_seed(0)):
        mask = e.action_mask
        last_of_turn = [i for i in range(len(mask)) if mask[i] and (i + 1 == len(mask) or not mask[i + 1])]
        assert all(e.rewards[i] == 0 for i in range(len(mask)) if i not in last_of_turn)
        assert sum(e.rewards) == pytest.approx(e.ret)
        assert e.tokens[0] == tok.bos_token_id and mask[0] == 0


# static_decode: the fixed-shape decode step that a GPU replays as a CUDA graph, run eagerly here.
@pytest.mark.parametrize("static_decode", [False, True])
def test_refills_compact_the_cache_and_stay_exact(policy_either_critic, monkeypatch, static_decode):
    """Many short episodes per row: the cache must be compacted, and results stay exact."""
    import rl_vf.engine as engine_mod

    policy, tok = policy_either_critic
    widths = []
    real = engine_mod._compact

    def spy(attn, cache):
        attn, cache = real(attn, cache)
        widths.append(attn.shape[1])
        return attn, cache

    monkeypatch.setattr(engine_mod, "_compact", spy)
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=5, max_action_tokens=3, static_decode=static_decode)
    episodes = engine.collect(list(range(60)), torch.Generator().manual_seed(2))
    longest = max(len(e.tokens) for e in episodes)
    assert max(widths) < 3 * longest  # without compaction it would grow to ~12 episodes' worth
    assert_matches_recompute(policy, tok, episodes)


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


def test_continuation_from_a_prefix_matches_full_recompute(policy_and_tokenizer):
    """Episodes that start mid-way (an env replayed to turn k and the transcript so far), mixed with
    episodes that start from a seed, score like a full recompute of their whole transcript."""
    policy, tok = policy_and_tokenizer
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=5, max_action_tokens=3)
    played = [e for e in engine.collect(list(range(30)), torch.Generator().manual_seed(4)) if len(e.actions) >= 2]
    starts = []
    for e in played:
        turn = len(e.actions) // 2
        env = CountingEnv()
        env.reset(seed=e.seed)
        for action in e.actions[:turn]:
            env.step(action)
        first_tokens = [t for t, m in enumerate(e.action_mask) if m and not e.action_mask[t - 1]]
        starts.append(Start(env, e.tokens[: first_tokens[turn]]))
    mixed = [s for pair in zip(starts, range(100, 100 + len(starts))) for s in pair]
    episodes = engine.collect(mixed, torch.Generator().manual_seed(5))
    for start, e in zip(mixed[::2], episodes[::2]):
        assert e.seed is None and e.tokens[: len(start.tokens)] == start.tokens
        assert not any(e.action_mask[: len(start.tokens)]) and any(e.action_mask)  # the prefix is the prompt
    assert [e.seed for e in episodes[1::2]] == list(range(100, 100 + len(starts)))
    assert_matches_recompute(policy, tok, episodes)


def test_sync_every_does_not_change_greedy_episodes(policy_and_tokenizer):
    """Checking for "all rows stopped" less often (the GPU setting) only adds padding steps."""
    policy, tok = policy_and_tokenizer

    def play(sync_every):
        engine = RolloutEngine(policy, tok, CountingEnv, num_envs=6, max_action_tokens=5, sync_every=sync_every)
        return [(e.tokens, e.action_mask, e.rewards) for e in engine.collect(range(20), torch.Generator(), greedy=True)]

    assert play(1) == play(4)


def test_bf16_autocast_path_runs_and_stays_close(policy_and_tokenizer):
    """precision=bf16 (the CUDA default) on the CPU: logits and values come out fp32, differ from the
    fp32 model's only by bf16 rounding, and the cached rollout still agrees with a recompute."""
    policy, tok = policy_and_tokenizer
    half = copy.deepcopy(policy)
    half.autocast_dtype = torch.bfloat16
    ids = torch.tensor([tok.encode("qq1>qqq2>")])
    (logits, values, _), (logits32, values32, _) = half(ids), policy(ids)
    assert logits.dtype == values.dtype == torch.float32
    assert not torch.equal(logits, logits32)  # autocast really ran in bf16
    torch.testing.assert_close(logits, logits32, atol=0.1, rtol=0)
    torch.testing.assert_close(values, values32, atol=0.1, rtol=0)
    engine = RolloutEngine(half, tok, CountingEnv, num_envs=5, max_action_tokens=3)
    assert_matches_recompute(half, tok, engine.collect(range(12), torch.Generator().manual_seed(0)), atol=0.1)


def test_env_threads_play_the_same_episodes(policy_and_tokenizer):
    """Stepping envs in a thread pool (for envs that wait on a subprocess) changes nothing but speed."""
    policy, tok = policy_and_tokenizer

    def play(env_threads):
        engine = RolloutEngine(policy, tok, CountingEnv, num_envs=6, max_action_tokens=3, env_threads=env_threads)
        episodes = engine.collect(range(20), torch.Generator().manual_seed(3))
        engine.close()
        return [(e.tokens, e.rewards, e.actions) for e in episodes]

    assert play(1) == play(4)


def test_growing_cache_layer_appends_in_place_and_matches_concatenation():
    from transformers.cache_utils import DynamicLayer

    from rl_vf.policy import GrowingLayer

    torch.manual_seed(0)
    grow, cat = GrowingLayer(), DynamicLayer()
    chunks = [torch.randn(4, 2, w, 3) for w in (5, 1, 1, 7, 1)]
    for i, chunk in enumerate(chunks):
        k, v = grow.update(chunk, -chunk)
        k_ref, v_ref = cat.update(chunk, -chunk)
        assert torch.equal(k, k_ref) and torch.equal(v, v_ref)
        if i == 1:
            buffer = grow.buffers[0].data_ptr()
    assert grow.buffers[0].data_ptr() == buffer  # 5 + 1 + 1 + 7 + 1 columns fit in the first buffer (64)
    # Row selection and compaction replace the tensors; the next append adopts them.
    rows = torch.tensor([2, 0])
    grow.batch_select_indices(rows)
    cat.batch_select_indices(rows)
    grow.keys, grow.values = grow.keys[:, :, 3:].contiguous(), grow.values[:, :, 3:].contiguous()
    cat.keys, cat.values = cat.keys[:, :, 3:], cat.values[:, :, 3:]
    more = torch.randn(2, 2, 70, 3)  # also past the first capacity
    k, v = grow.update(more, more)
    k_ref, v_ref = cat.update(more, more)
    assert k.shape == (2, 2, 12 + 70, 3) and torch.equal(k, k_ref) and torch.equal(v, v_ref)


def test_growing_cache_keeps_columns_within_its_buffers():
    """Compaction moves each row's kept columns to the front of the same buffers, in the given
    order, and the appends after it stay in them."""
    from rl_vf.policy import GrowingLayer

    torch.manual_seed(0)
    layer = GrowingLayer()
    keys, values = torch.randn(3, 2, 10, 4), torch.randn(3, 2, 10, 4)
    layer.update(keys, values)
    buffer = layer.buffers[0].data_ptr()
    order = torch.tensor([[1, 4, 9], [0, 2, 3], [7, 8, 9]])  # a different set of columns per row
    layer.keep_columns(order)
    for row, columns in enumerate(order):
        assert torch.equal(layer.keys[row], keys[row][:, columns])
        assert torch.equal(layer.values[row], values[row][:, columns])
    new = torch.randn(3, 2, 1, 4)
    k, _ = layer.update(new, new)
    assert k.shape == (3, 2, 4, 4) and torch.equal(k[:, :, 3:], new)
    assert layer.buffers[0].data_ptr() == buffer


def test_growing_cache_headroom_keeps_a_whole_action_in_one_buffer():
    from rl_vf.policy import growing_cache

    # A 60-token prefill, then an action budget of 100 one-token decode steps: the buffer made at the
    # prefill holds all of them (without headroom it would move at column 121, in mid-action).
    cache = growing_cache(headroom=100)
    cache.update(torch.randn(2, 3, 60, 4), torch.randn(2, 3, 60, 4), layer_idx=0)
    layer = cache.layers[0]
    buffer = layer.buffers[0].data_ptr()
    for _ in range(100):
        keys, _ = cache.update(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4), layer_idx=0)
        assert layer.buffers[0].data_ptr() == buffer
    assert keys.shape == (2, 3, 160, 4)
    assert growing_cache().layers == [] and cache.layers[0].headroom == 100


def windowed(policy, window: int):
    """A copy of ``policy`` whose tokens each see at most ``window`` tokens."""
    policy = copy.deepcopy(policy)
    setattr(policy.lm.config, WINDOW_KEY, window)
    return policy


def test_window_mask_counts_each_rows_own_tokens():
    # Row 0: tokens at columns 0, 1, 3, 4 (column 2 is an old episode's or padding); row 1: all live.
    live = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    mask = visible(live, queries=2, window=2)[:, 0].int()  # queries: columns 3 and 4
    assert mask.tolist() == [[[0, 1, 0, 1, 0],   # position 2 sees positions 1, 2 (column 2 is not a token)
                              [0, 0, 0, 1, 1]],  # position 3 sees 2, 3
                             [[0, 0, 1, 1, 0],
                              [0, 0, 0, 1, 1]]]
    # A padding query with no token before it sees itself, so its softmax is never over nothing.
    assert visible(torch.zeros(1, 3, dtype=torch.bool), 1, 2)[0, 0].tolist() == [[False, False, True]]


def test_attention_window_limits_what_a_token_sees(tmp_path):
    """One layer, a window of 4: position 9 sees positions 6-9 only, so a change at position 5 reaches
    position 8 but not 9; without the window it reaches 9 too."""
    policy, tok = load_policy("tiny", seed=0, tiny=TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64,
                                                              attention_window=4))
    assert policy.attention_window == 4
    tokens = torch.tensor([tok.encode("q1>2q3>4q5", add_special_tokens=False)])
    changed = tokens.clone()
    changed[0, 5] = tok.encode("9", add_special_tokens=False)[0]
    ones = torch.ones_like(tokens)

    def logits(t):
        with torch.no_grad():
            return policy(t, attention_mask=ones)[0][0]

    assert torch.equal(logits(tokens)[9], logits(changed)[9])
    assert not torch.allclose(logits(tokens)[8], logits(changed)[8])
    # Eager attention adds the mask to the scores (sdpa selects by it): both read the same window.
    eager = copy.deepcopy(policy)
    eager.lm.set_attn_implementation("eager")
    with torch.no_grad():
        torch.testing.assert_close(eager(changed, attention_mask=ones)[0][0], logits(changed))
    policy.save_pretrained(str(tmp_path), tok)  # the window is part of the saved model
    reloaded, _ = load_policy(str(tmp_path))
    assert reloaded.attention_window == 4
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens, attention_mask=ones)[0][0], logits(tokens))
    setattr(policy.lm.config, WINDOW_KEY, 0)
    assert not torch.allclose(logits(tokens)[9], logits(changed)[9])


@pytest.mark.parametrize("window,static_decode", [(3, False), (7, False), (3, True)])
def test_windowed_rollout_matches_full_recompute(policy_either_critic, window, static_decode):
    """Sampling-time logprobs and values under an attention window equal the windowed recompute,
    with refilled and compacted rows (the window counts a row's own tokens, not cache columns)."""
    policy, tok = policy_either_critic
    policy = windowed(policy, window)
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=5, max_action_tokens=3, static_decode=static_decode)
    episodes = engine.collect(list(range(60)), torch.Generator().manual_seed(3))
    assert max(len(e.tokens) for e in episodes) > 4 * window
    assert_matches_recompute(policy, tok, episodes)
    # The window changes the policy: the same transcripts score differently without it.
    batch = RolloutBatch.from_episodes(episodes, tok.pad_token_id)
    with torch.no_grad():
        unwindowed = policy_either_critic[0].score(batch.tokens, batch.attention_mask)["logprobs"]
    m = batch.action_mask.bool()
    assert (unwindowed[m] - batch.sample_logprobs[m]).abs().max() > 1e-3
