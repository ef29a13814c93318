"""The Monte-Carlo value arm (vine): forked-cache continuations, their values and their cost."""
import copy
import threading

import numpy as np
import pytest
import torch

from envs.base import TextEnv, text_space
from rl_vf import branches
from rl_vf.actor import check_branchable
from rl_vf.advantages import turn_starts
from rl_vf.config import ConfigError
from rl_vf.engine import Fork, RolloutEngine, action_token_mask, copy_env
from rl_vf.policy import TinyConfig, load_policy


class Ladder(TextEnv):
    """Three turns; every action, legal or not, pays the turn's reward, so a state's value does not
    depend on the policy: V(turn j) = the discounted rewards still to come."""

    REWARDS = (0.5, 0.25, 1.0)

    def __init__(self):
        self.observation_space = text_space("step:0123", 7)
        self.action_space = text_space("0123456789", 2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.turn = 0
        return "step:0", {}

    def step(self, action):
        reward = self.REWARDS[self.turn]
        self.turn += 1
        done = self.turn == len(self.REWARDS)
        return f"step:{self.turn}", reward, done, False, {"invalid_action": False, "success": done}


def exact_value(turn: int, gamma: float) -> float:
    return sum(gamma ** i * r for i, r in enumerate(Ladder.REWARDS[turn:]))


@pytest.fixture(scope="module")
def policy():
    policy, tok = load_policy("tiny", seed=0, tiny=TinyConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64),
                              alphabet="step:0123456789\n")
    policy.allowed_tokens = action_token_mask(tok, "0123456789")
    return policy.eval(), tok


def played(policy, seeds, rows=8):
    policy, tok = policy
    engine = RolloutEngine(policy, tok, Ladder, num_envs=rows, max_action_tokens=2, values=False, snapshots=True)
    return engine, engine.collect(seeds, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_vine_value_on_a_deterministic_env_is_the_exact_value(policy, gamma):
    engine, episodes = played(policy, [1, 2, 3])
    assert [len(e.states) for e in episodes] == [3, 3, 3]
    values, generated = branches.turn_values(engine, episodes, 3, gamma, torch.Generator().manual_seed(1),
                                             np.random.default_rng(0))
    assert values == [[pytest.approx(exact_value(j, gamma), abs=1e-6) for j in range(3)]] * 3
    # 3 episodes x 3 continuations from each of 3 turns, playing 3 + 2 + 1 actions of 1-2 tokens.
    assert 3 * 3 * 6 <= generated <= 2 * 3 * 3 * 6


def test_turn_values_spread_over_each_turns_tokens():
    mask = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 0, 1, 0, 1, 1]])
    out = branches.turn_values_tensor([[0.5, 2.0], [1.0, 3.0]], mask)
    assert out.tolist() == [[0, 0.5, 0.5, 0, 2.0, 0], [0, 0, 1.0, 0, 3.0, 3.0]]


def test_forked_continuations_leave_the_episode_and_cache_untouched_and_score_as_a_recompute(policy):
    engine, episodes = played(policy, [4, 5])
    before = copy.deepcopy([(e.tokens, e.action_mask, e.rewards, e.actions) for e in episodes])
    layers = branches.prefix_cache(engine.policy, episodes, engine.pad_id, engine.device)
    saved = [(k.clone(), v.clone()) for k, v in layers]
    forks, turns = [], []
    for b, e in enumerate(episodes):
        for j, (start, state) in enumerate(zip(turn_starts(e.action_mask), e.states)):
            kv = [(k[b, :, : start - 1], v[b, :, : start - 1]) for k, v in layers]
            forks += [Fork(env, e.tokens[:start], kv) for env in branches.clones(state, 2, np.random.default_rng(b))]
            turns += [j, j]
    engine.envs = engine.envs[:3]  # fewer rows than forks: rows are refilled with forks mid-collect
    continuations = engine.collect(forks, torch.Generator().manual_seed(2))
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(layers, saved))
    assert [(e.tokens, e.action_mask, e.rewards, e.actions) for e in episodes] == before
    assert [[s.turn for s in e.states] for e in episodes] == [[0, 1, 2]] * 2  # the snapshots never moved
    for fork, turn, cont in zip(forks, turns, continuations):
        assert cont.tokens[: len(fork.tokens)] == fork.tokens and len(cont.actions) == 3 - turn
        assert cont.ret == pytest.approx(sum(Ladder.REWARDS[turn:]))
        with torch.no_grad():
            full = engine.policy.score(torch.tensor([cont.tokens]), torch.ones(1, len(cont.tokens), dtype=torch.long))
        mask = torch.tensor(cont.action_mask, dtype=torch.bool)
        assert torch.allclose(full["logprobs"][0][mask], torch.tensor(cont.logprobs)[mask], atol=1e-5)


class Plain(Ladder):
    """No clone(): branches fall back to a deep copy."""

    clone = None


class Locked(Ladder):
    """Holds a lock: it cannot be copied at all."""

    def reset(self, seed=None, options=None):
        self.lock = threading.Lock()
        return super().reset(seed=seed)


def test_an_env_without_clone_is_deep_copied_and_one_that_cannot_be_copied_is_refused():
    env = Plain()
    env.reset(seed=0)
    env.step("1")
    twin = copy_env(env, seed=3)
    twin.step("1")
    assert (env.turn, twin.turn) == (1, 2)
    check_branchable(Plain, "Plain-v0")
    with pytest.raises(ConfigError, match="Locked-v0.*cannot be copied"):
        check_branchable(Locked, "Locked-v0")


def test_vine_trains_and_pays_for_its_continuations(tmp_path):
    """A vine run: Monte-Carlo values on every update, their tokens counted as generated, sampled
    success beside greedy in the summary, no critic."""
    import json

    from rl_vf.cli import main
    from rl_vf.metrics_log import read_metrics

    run = tmp_path / "vine"
    assert main(["train", "--env", "KeyToDoor-v0", "--env-kwargs", '{"delay": 2}', "--algo", "vine",
                 "--vine-rollouts", "2", "--total-episodes", "32", "--episodes-per-update", "16", "--num-envs", "16",
                 "--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64", "--threads", "1",
                 "--final-eval-episodes", "8", "--eval-every", "0", "--wandb", "disabled", "--out", str(run)]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    for row in rows:
        assert row["perf/branch_tokens"] > 0 and "value/bias" in row and "loss/vf" not in row
    # K continuations from every turn's state, each at least one token: branch tokens >= K x env steps.
    assert rows[-1]["perf/branch_tokens"] >= 2 * rows[-1]["train/env_steps"]
    assert rows[-1]["perf/generated_tokens"] - rows[-1]["perf/branch_tokens"] >= rows[-1]["train/env_steps"]
    summary = json.loads((run / "summary.json").read_text())
    assert {"eval/success_rate", "eval/success_rate_sampled"} <= set(summary)
    assert not (run / "checkpoints" / "final" / "critic").exists()


class Endless(Ladder):
    """Pays 1 a step and ends by itself only after 20 steps: a hidden TimeLimit ends it first."""

    REWARDS = (1.0,) * 20


def test_a_hidden_time_limit_comes_along_into_the_copies(policy):
    from gymnasium.wrappers import TimeLimit

    policy, tok = policy
    engine = RolloutEngine(policy, tok, lambda: TimeLimit(Endless(), 3), num_envs=2, max_action_tokens=2,
                           values=False, snapshots=True)
    episodes = engine.collect([0, 1], torch.Generator().manual_seed(0))
    assert [(len(e.actions), e.truncated, e.ret) for e in episodes] == [(3, True, 3.0)] * 2
    values, _ = branches.turn_values(engine, episodes, 2, 1.0, torch.Generator().manual_seed(1),
                                     np.random.default_rng(0))
    assert values == [[3.0, 2.0, 1.0]] * 2  # the limit's steps left, not the env's own 20
