"""Credit assignment (rl_vf/advantages.py) against hand-computed numbers.

Token-level MDP of DESIGN.md: mask 1 on action tokens, reward of env step k on the last token of
turn k, observation tokens skipped (not decayed through), gamma once per turn boundary.
"""
import math

import pytest
import torch

from rl_vf.advantages import discounted_returns, episode_baseline, gae, reinforce


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def close(a, b, atol=1e-5):
    b = torch.as_tensor(b, dtype=a.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=0), f"\n got {a}\nwant {b}"


# ---------------------------------------------------------------- GAE: analytic cases


def test_terminal_reward_constant_value_single_turn():
    # obs obs act act act pad pad; reward R=2 on the last action token; V = 0.5 everywhere.
    mask = t([[0, 0, 1, 1, 1, 0, 0]])
    rewards = t([[0, 0, 0, 0, 2.0, 0, 0]])
    values = torch.full((1, 7), 0.5)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(adv, [[0, 0, 1.5, 1.5, 1.5, 0, 0]])
    close(ret, [[0, 0, 2.0, 2.0, 2.0, 0, 0]])
    # Exactly zero off the action tokens.
    assert torch.equal(adv[mask == 0], torch.zeros(4))
    assert torch.equal(ret[mask == 0], torch.zeros(4))


def test_terminal_reward_constant_value_multi_turn():
    # obs act act obs obs act act act obs act pad pad: 3 turns, reward only at the very end.
    mask = t([[0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0]])
    rewards = torch.zeros(1, 12)
    rewards[0, 9] = 3.0
    values = torch.full((1, 12), -0.25)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    R_minus_V = 3.25
    close(adv, mask * R_minus_V)
    close(ret, mask * 3.0)


def test_lam0_one_step_td_errors():
    # obs act act obs act act pad; turns {1,2} and {4,5}; gamma = 0.9, lam = 0.
    mask = t([[0, 1, 1, 0, 1, 1, 0]])
    # Values at non-action positions are garbage on purpose: they must be ignored.
    values = t([[10.0, 1.0, 2.0, -7.0, 3.0, 4.0, 5.0]])
    rewards = t([[0, 0, 0.5, 0, 0, 1.0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    # TD errors: t=1: 0 + 1.0*V2 - V1 = 1.0 (same turn: discount 1); t=2: 0.5 + 0.9*V4 - V2 = 1.2
    # (turn boundary: gamma once); t=4: V5 - V4 = 1.0; t=5: 1.0 + 0.9*0 - V5 = -3.0 (terminated).
    # lam = 0 cuts only at turn boundaries: inside a turn the advantages chain with lambda 1, so
    # every token's advantage is its turn's one-step TD error r_k + gamma V(s_{k+1}) - V(t).
    close(adv, [[0, 2.2, 1.2, 0, -2.0, -3.0, 0]])
    close(ret, [[0, 3.2, 3.2, 0, 1.0, 1.0, 0]])


def test_lambda_applies_once_per_turn_by_hand():
    # Same transcript, lam = 0.5: A_t = delta_t + w_t * A_next, w = 1 inside a turn, gamma * lam at
    # a boundary (DESIGN.md: lambda per turn, like gamma; never per token).
    mask = t([[0, 1, 1, 0, 1, 1, 0]])
    values = t([[10.0, 1.0, 2.0, -7.0, 3.0, 4.0, 5.0]])
    rewards = t([[0, 0, 0.5, 0, 0, 1.0, 0]])
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    a5 = -3.0
    a4 = 1.0 + a5  # -2.0: same turn, lambda 1 (per-token lambda would give 1.0 + 0.5 * a5 = -0.5)
    a2 = 1.2 + 0.9 * 0.5 * a4  # 0.3: the turn boundary, gamma * lam once
    a1 = 1.0 + a2  # 1.3
    close(adv, [[0, 1.3, 0.3, 0, -2.0, -3.0, 0]])
    # The closed form of DESIGN.md for token 1 of turn 0: r_0 + gamma V(s_1) - V(t) + gamma lam A(s_1).
    assert abs(a1 - (0.5 + 0.9 * 3.0 - 1.0 + 0.9 * 0.5 * a4)) < 1e-9


def _two_turn_transcript(n_obs_between, values_act, rewards_act, turn_lens=(2, 3)):
    """obs, turn 0, n_obs_between observation tokens, turn 1, 2 padding tokens."""
    mask, vals, rews = [0.0], [99.0], [0.0]
    k = 0
    for i, L in enumerate(turn_lens):
        if i > 0:
            mask += [0.0] * n_obs_between
            vals += [-99.0] * n_obs_between
            rews += [0.0] * n_obs_between
        mask += [1.0] * L
        vals += values_act[k : k + L]
        rews += rewards_act[k : k + L]
        k += L
    mask += [0.0, 0.0]
    vals += [7.0, 7.0]
    rews += [0.0, 0.0]
    return t([rews]), t([vals]), t([mask])


@pytest.mark.parametrize("gamma,lam", [(0.9, 0.8), (0.5, 0.0), (0.7, 1.0)])
def test_observation_tokens_are_skipped_not_decayed_through(gamma, lam):
    values_act = [0.3, -0.2, 1.1, 0.4, -0.6]
    rewards_act = [0.0, 1.0, 0.0, 0.0, 2.0]  # rewards on turn-final tokens
    r1, v1, m1 = _two_turn_transcript(1, values_act, rewards_act)
    r5, v5, m5 = _two_turn_transcript(5, values_act, rewards_act)
    a1, ret1 = gae(r1, v1, m1, gamma=gamma, lam=lam)
    a5, ret5 = gae(r5, v5, m5, gamma=gamma, lam=lam)
    close(a1[m1 == 1], a5[m5 == 1], atol=1e-6)
    close(ret1[m1 == 1], ret5[m5 == 1], atol=1e-6)
    # And the number itself for one case: first token, lam=1 => G - V with one gamma.
    if lam == 1.0:
        assert a1[0, 1].item() == pytest.approx(1.0 + gamma * 2.0 - 0.3, abs=1e-6)


def test_gamma_once_per_turn_boundary_not_per_token():
    gamma = 0.5
    # Turn lengths 3, 1, 2 vs 1, 1, 1; rewards 1, 2, 4 on turn-final tokens; V = 0.
    # Returns by hand: turn 2: 4; turn 1: 2 + 0.5*4 = 4; turn 0: 1 + 0.5*4 = 3.
    long_mask = t([[0, 1, 1, 1, 0, 1, 0, 1, 1]])
    long_rew = t([[0, 0, 0, 1.0, 0, 2.0, 0, 0, 4.0]])
    short_mask = t([[0, 1, 0, 1, 0, 1]])
    short_rew = t([[0, 1.0, 0, 2.0, 0, 4.0]])
    a_long, r_long = gae(long_rew, torch.zeros(1, 9), long_mask, gamma=gamma, lam=1.0)
    a_short, r_short = gae(short_rew, torch.zeros(1, 6), short_mask, gamma=gamma, lam=1.0)
    close(a_long, [[0, 3.0, 3.0, 3.0, 0, 4.0, 0, 4.0, 4.0]])
    close(a_short, [[0, 3.0, 0, 4.0, 0, 4.0]])
    close(r_long, a_long)
    close(r_short, a_short)


def test_gamma_once_per_turn_boundary_with_values():
    gamma = 0.5
    # obs act act act obs act: turn 0 of 3 tokens (reward 1), turn 1 of 1 token (reward 2).
    mask = t([[0, 1, 1, 1, 0, 1]])
    rewards = t([[0, 0, 0, 1.0, 0, 2.0]])
    values = t([[5.0, 0.2, 0.4, 0.6, 5.0, 1.0]])
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=1.0)
    # lam = 1: A_t = G_t - V_t with G(turn 0) = 1 + 0.5 * 2 = 2, G(turn 1) = 2.
    close(adv, [[0, 1.8, 1.6, 1.4, 0, 1.0]])
    close(ret, [[0, 2.0, 2.0, 2.0, 0, 2.0]])
    # One-token version of turn 0 gets the same discounting.
    adv1, _ = gae(t([[0, 1.0, 0, 2.0]]), t([[5.0, 0.2, 5.0, 1.0]]), t([[0, 1, 0, 1]]), gamma=gamma, lam=1.0)
    close(adv1, [[0, 1.8, 0, 1.0]])


# ---------------------------------------------------------------- bootstrap (truncation)


def test_bootstrap_discounted_like_next_turn():
    gamma = 0.9
    # obs act act obs act act pad pad; truncated after turn 1 with bootstrap b = 10.
    mask = t([[0, 1, 1, 0, 1, 1, 0, 0]])
    rewards = t([[0, 0, 1.0, 0, 0, 0.0, 0, 0]])
    values = t([[3.0, 1.0, 2.0, 3.0, 3.0, 4.0, 3.0, 3.0]])
    b = t([10.0])
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=1.0, bootstrap=b)
    # G(turn 1) = 0 + 0.9 * 10 = 9; G(turn 0) = 1 + 0.9 * 9 = 9.1.
    close(ret, [[0, 9.1, 9.1, 0, 9.0, 9.0, 0, 0]])
    close(adv, [[0, 8.1, 7.1, 0, 6.0, 5.0, 0, 0]])
    # lam = 0: the last token's TD error uses gamma * b.
    adv0, _ = gae(rewards, values, mask, gamma=gamma, lam=0.0, bootstrap=b)
    # TD errors t=1: V2 - V1 = 1; t=2: 1 + 0.9*3 - 2 = 1.7; t=4: 4 - 3 = 1; t=5: 0 + 9 - 4 = 5;
    # lam = 0 cuts at the turn boundary only: t=4: 1 + 5, t=1: 1 + 1.7.
    close(adv0, [[0, 2.7, 1.7, 0, 6.0, 5.0, 0, 0]])


def test_bootstrap_per_row_and_none_equals_zeros():
    g = torch.Generator().manual_seed(1)
    mask = t([[0, 1, 1, 0, 1, 0, 0], [0, 0, 1, 0, 1, 1, 1]])
    rewards = torch.randn(2, 7, generator=g) * mask
    values = torch.randn(2, 7, generator=g)
    b = t([2.0, -3.0])
    adv_b, ret_b = gae(rewards, values, mask, gamma=0.8, lam=0.9, bootstrap=b)
    adv_n, ret_n = gae(rewards, values, mask, gamma=0.8, lam=0.9)
    adv_z, ret_z = gae(rewards, values, mask, gamma=0.8, lam=0.9, bootstrap=torch.zeros(2))
    assert torch.equal(adv_n, adv_z) and torch.equal(ret_n, ret_z)
    # With lam = 0.9 the bootstrap reaches a token as gamma * b * (gamma * lam) per turn boundary
    # in between -- check the difference by hand for row 0: action tokens 1, 2 (turn 0) and 4
    # (turn 1). Bootstrap term on token 4: 0.8*2 = 1.6; token 2: 0.8*0.9 * 1.6 = 1.152; token 1
    # (same turn): 1.152.
    diff = adv_b - adv_n
    close(diff[0], [0, 1.152, 1.152, 0, 1.6, 0, 0])
    # row 1 tokens 2 (turn 0), 4, 5, 6 (turn 1): tokens 6, 5, 4: 0.8*-3 = -2.4; token 2 (across a
    # boundary): 0.8*0.9*-2.4 = -1.728.
    close(diff[1], [0, 0, -1.728, 0, -2.4, -2.4, -2.4])
    assert torch.equal(adv_b[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.equal(ret_b[mask == 0], torch.zeros(int((mask == 0).sum())))


# ---------------------------------------------------------------- gamma = lam = 1 identity


def test_gamma_lam_one_advantage_is_return_to_go_minus_value_random():
    g = torch.Generator().manual_seed(0)
    B, T = 6, 40
    mask = torch.zeros(B, T)
    rewards = torch.zeros(B, T)
    for b in range(B):
        pos = 0
        end = T - int(torch.randint(0, 8, (1,), generator=g))  # right padding
        while True:
            pos += int(torch.randint(1, 4, (1,), generator=g))  # >= 1 observation token
            L = int(torch.randint(1, 5, (1,), generator=g))
            if pos + L > end:
                break
            mask[b, pos : pos + L] = 1
            rewards[b, pos + L - 1] = torch.randn(1, generator=g)
            pos += L
    values = torch.randn(B, T, generator=g)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # The return of a token is the sum of the rewards from its own turn on (reward-to-go):
    # rewards sit on turn-final tokens, so a suffix sum over positions t..T-1 is exactly that.
    return_to_go = rewards.flip(1).cumsum(1).flip(1)
    close(adv, (return_to_go - values) * mask)
    close(ret, return_to_go * mask)
    # Tokens of the first turn see the whole episode return.
    episode_return = rewards.sum(1)
    for b in range(B):
        first = int(mask[b].nonzero()[0])
        assert adv[b, first].item() == pytest.approx((episode_return[b] - values[b, first]).item(), abs=1e-5)
    # Terminal-only rewards: every action token gets (episode return - its value).
    terminal = torch.zeros_like(rewards)
    last = (mask * torch.arange(T)).argmax(1)
    terminal[torch.arange(B), last] = rewards.sum(1)
    adv_t, _ = gae(terminal, values, mask, gamma=1.0, lam=1.0)
    close(adv_t, (episode_return[:, None] - values) * mask)


# ---------------------------------------------------------------- batch independence


def test_rows_are_independent_of_each_other():
    g = torch.Generator().manual_seed(3)
    # Row 0: length 9 (no padding); row 1: length 5, then 4 padding tokens.
    m0 = [0, 1, 1, 0, 0, 1, 0, 1, 1]
    m1 = [0, 0, 1, 0, 1]
    mask = t([m0, m1 + [0, 0, 0, 0]])
    rewards = torch.randn(2, 9, generator=g) * mask
    values = torch.randn(2, 9, generator=g)
    values[1, 5:] = 1e3  # garbage on padding
    b = t([0.7, -1.3])
    for kw in ({}, {"bootstrap": b}):
        adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.95, **kw)
        kw0 = {"bootstrap": b[:1]} if kw else {}
        kw1 = {"bootstrap": b[1:]} if kw else {}
        a0, r0 = gae(rewards[:1], values[:1], mask[:1], gamma=0.9, lam=0.95, **kw0)
        a1, r1 = gae(rewards[1:, :5], values[1:, :5], mask[1:, :5], gamma=0.9, lam=0.95, **kw1)
        close(adv[:1], a0, atol=1e-6)
        close(ret[:1], r0, atol=1e-6)
        close(adv[1:, :5], a1, atol=1e-6)
        close(ret[1:, :5], r1, atol=1e-6)
        assert torch.equal(adv[1, 5:], torch.zeros(4))


# ---------------------------------------------------------------- REINFORCE baselines


def test_baseline_none_and_mean():
    R = t([1.0, 2.0, 3.0, 6.0])
    close(episode_baseline(R, "none"), [1.0, 2.0, 3.0, 6.0])
    close(episode_baseline(R, "mean"), [-2.0, -1.0, 0.0, 3.0])


def test_baseline_rloo_single_group():
    R = t([1.0, 0.0, 0.0, 1.0])
    adv = episode_baseline(R, "rloo", group_ids=torch.tensor([0, 0, 0, 0]))
    close(adv, [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3])
    adv3 = episode_baseline(t([0.0, 1.0, 5.0]), "rloo", group_ids=torch.tensor([4, 4, 4]))
    close(adv3, [0 - 3.0, 1 - 2.5, 5 - 0.5])


def test_baseline_group_normalised_unbiased_std():
    R = t([1.0, 0.0, 0.0, 1.0])
    adv = episode_baseline(R, "group", group_ids=torch.tensor([0, 0, 0, 0]))
    # mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 1/sqrt(3) -> +-0.5 * sqrt(3) = +-0.8660254
    close(adv, [0.8660254, -0.8660254, -0.8660254, 0.8660254], atol=1e-5)
    # [0, 1, 5]: mean 2, deviations -2, -1, 3, unbiased var 14/2 = 7, std 2.6457513
    adv3 = episode_baseline(t([0.0, 1.0, 5.0]), "group", group_ids=torch.tensor([1, 1, 1]))
    close(adv3, [-0.7559289, -0.3779645, 1.1338934], atol=1e-5)


def test_baselines_with_two_groups_contiguous_and_interleaved():
    # group 0 = {1, 3}, group 1 = {2, 2} (zero std)
    R = t([1.0, 3.0, 2.0, 2.0])
    gids = torch.tensor([0, 0, 1, 1])
    close(episode_baseline(R, "rloo", gids), [-2.0, 2.0, 0.0, 0.0])
    close(episode_baseline(R, "group", gids), [-0.7071068, 0.7071068, 0.0, 0.0])
    # Same groups, interleaved ids.
    R2 = t([1.0, 2.0, 3.0, 2.0])
    gids2 = torch.tensor([0, 1, 0, 1])
    close(episode_baseline(R2, "rloo", gids2), [-2.0, 0.0, 2.0, 0.0])
    close(episode_baseline(R2, "group", gids2), [-0.7071068, 0.0, 0.7071068, 0.0])
    # Non-contiguous, non-zero-based ids.
    close(episode_baseline(R2, "rloo", torch.tensor([7, 3, 7, 3])), [-2.0, 0.0, 2.0, 0.0])


def test_zero_std_groups_get_exactly_zero():
    R = t([2.0, 2.0, 2.0, -1.0, -1.0])
    gids = torch.tensor([0, 0, 0, 1, 1])
    assert torch.equal(episode_baseline(R, "group", gids), torch.zeros(5))
    assert torch.equal(episode_baseline(R, "rloo", gids), torch.zeros(5))
    # Mixed: one zero-std group, one not.
    adv = episode_baseline(t([0.5, 0.5, 0.0, 1.0]), "group", torch.tensor([0, 0, 1, 1]))
    assert adv[0].item() == 0.0 and adv[1].item() == 0.0
    assert adv[2].item() == pytest.approx(-0.7071068, abs=1e-5)


@pytest.mark.parametrize("baseline", ["rloo", "group"])
def test_group_of_size_one_raises(baseline):
    with pytest.raises(ValueError):
        episode_baseline(t([1.0, 0.0, 1.0]), baseline, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError):
        reinforce(t([1.0, 0.0, 1.0]), torch.ones(3, 2), baseline, torch.tensor([0, 1, 1]))


def test_unknown_baseline_raises_naming_it():
    with pytest.raises(ValueError, match="bogus_baseline"):
        episode_baseline(t([1.0, 0.0]), "bogus_baseline", torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="bogus_baseline"):
        reinforce(t([1.0, 0.0]), torch.ones(2, 3), "bogus_baseline")


def test_reinforce_same_advantage_on_every_action_token():
    mask = t([[0, 1, 1, 0, 1, 0], [0, 0, 1, 0, 1, 1], [1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0]])
    R = t([1.0, 0.0, 0.0, 1.0])
    adv = reinforce(R, mask, "rloo", torch.tensor([0, 0, 0, 0]))
    per_ep = [2 / 3, -2 / 3, -2 / 3, 2 / 3]
    close(adv, torch.tensor(per_ep)[:, None] * mask)
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))
    adv_mean = reinforce(t([1.0, 2.0, 3.0, 6.0]), mask)  # default baseline "mean"
    close(adv_mean, t([-2.0, -1.0, 0.0, 3.0])[:, None] * mask)
    adv_none = reinforce(t([1.0, 2.0, 3.0, 6.0]), mask, "none")
    close(adv_none, t([1.0, 2.0, 3.0, 6.0])[:, None] * mask)


def test_discounted_returns_discount_once_per_turn():
    # Row 0: turns of 3, 1, 2 tokens with rewards 1, 2, 4: 1 + 0.5*2 + 0.25*4 = 3. Row 1: one reward on
    # the third of three one-token turns, after observation tokens and before padding: 0.25 * 8 = 2.
    mask = t([[0, 1, 1, 1, 0, 1, 0, 1, 1], [0, 0, 1, 0, 1, 0, 1, 0, 0]])
    rewards = t([[0, 0, 0, 1.0, 0, 2.0, 0, 0, 4.0], [0, 0, 0, 0, 0, 0, 8.0, 0, 0]])
    close(discounted_returns(rewards, mask, 0.5), [3.0, 2.0])
    close(discounted_returns(rewards, mask, 1.0), rewards.sum(1))


def test_reinforce_scores_the_discounted_return_when_gamma_is_below_one():
    from types import SimpleNamespace

    from rl_vf.algos import ALGOS

    algo = ALGOS["reinforce"]

    mask = t([[0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 0, 0]])
    rewards = t([[0, 0, 0, 0, 0, 1.0], [0, 0, 0, 1.0, 0, 0]])  # a win on turn 3, a win on turn 2
    batch = SimpleNamespace(rewards=rewards, action_mask=mask, returns=rewards.sum(1), group_ids=None)
    for gamma, per_episode in (1.0, [1.0, 1.0]), (0.5, [0.25, 0.5]):
        adv, targets = algo.advantages(batch, {}, SimpleNamespace(gamma=gamma, baseline="none"))
        close(adv, t(per_episode)[:, None] * mask)
        assert targets is None


def test_true_deltas_sit_on_each_turns_first_action_token():
    from rl_vf.engine import Episode, RolloutBatch

    # obs, action (2 tokens), obs, action (1 token): rewards 0 then 1; exact values 0.5 -> 0.25 -> 1.0 (end).
    e = Episode(seed=0, tokens=[5, 6, 7, 8, 9], action_mask=[0, 1, 1, 0, 1], rewards=[0, 0, 0, 0, 1.0],
                logprobs=[0.0] * 5, values=[0.0] * 5, true_values=[0.5, 0.25, 0.0], ret=1.0)
    deltas = RolloutBatch.from_episodes([e], pad_id=0).true_deltas[0]
    assert deltas[1].item() == -0.25 and deltas[4].item() == 1.0 - 0.25
    assert torch.isnan(deltas[[0, 2, 3]]).all()
    assert RolloutBatch.from_episodes([Episode(seed=0, tokens=[1, 2], action_mask=[0, 1], rewards=[0, 0],
                                               logprobs=[0, 0], values=[0, 0], true_values=[math.nan, math.nan])],
                                      pad_id=0).true_deltas is None


def test_decision_signal_is_each_decisions_share_of_the_advantage_variance():
    """Two independent decisions of equal variance: an advantage that is the decision's own TD error has
    all of its variance as signal (1); the outcome-only sum of both has half (0.5)."""
    from rl_vf.learner import decision_signal

    g = torch.Generator().manual_seed(0)
    d = torch.randn(4000, 2, generator=g)
    deltas = torch.full((4000, 4), math.nan)
    deltas[:, 0], deltas[:, 2] = d[:, 0], d[:, 1]
    own = torch.zeros(4000, 4)
    own[:, 0], own[:, 2] = d[:, 0], d[:, 1]
    outcome = d.sum(1, keepdim=True).expand(-1, 4)
    assert decision_signal(own, deltas)["advantage/decision_r2"] == pytest.approx(1.0)
    assert decision_signal(outcome, deltas)["advantage/decision_r2"] == pytest.approx(0.5, abs=0.03)


def test_decision_signal_of_data_parallel_processes_is_that_of_all_their_episodes():
    """Each process's per-decision moments, gathered and merged, give the squared correlations of every
    episode together (as one process holding them all computes them: torch.corrcoef), not an average
    of each process's own; decisions a process never reached, and a process without values, add none."""
    from rl_vf.learner import decision_moments, decision_signal

    g = torch.Generator().manual_seed(1)
    deltas = torch.full((60, 6), math.nan)
    deltas[:, [0, 2]] = torch.randn(60, 2, generator=g)
    deltas[:20, 4] = torch.randn(20, generator=g)  # a third decision in the first 20 episodes alone
    advantages = deltas.nan_to_num() * 0.5 + torch.randn(60, 6, generator=g)
    shares = []
    for column in (0, 2):
        shares.append(torch.corrcoef(torch.stack([advantages[:, column], deltas[:, column]]))[0, 1] ** 2)
    shares.append(torch.corrcoef(torch.stack([advantages[:20, 4], deltas[:20, 4]]))[0, 1] ** 2)
    whole = decision_signal(advantages, deltas)["advantage/decision_r2"]
    assert whole == pytest.approx(float(sum(shares) / 3), rel=1e-5)
    # Process 0 holds episodes 0-34 (all of the third decision), process 1 episodes 35-59.
    others = decision_moments(advantages[35:], deltas[35:])
    assert len(others) == 2
    gathered = decision_signal(advantages[:35], deltas[:35], lambda mine: mine + [others])
    assert gathered["advantage/decision_r2"] == pytest.approx(whole, rel=1e-9)
    averaged = (decision_signal(advantages[:35], deltas[:35])["advantage/decision_r2"] +
                decision_signal(advantages[35:], deltas[35:])["advantage/decision_r2"]) / 2
    assert abs(averaged - whole) > 1e-3  # what averaging each process's own would have logged
    assert decision_signal(advantages, None, lambda mine: mine + [decision_moments(advantages, deltas)]) == \
        decision_signal(advantages, deltas)
