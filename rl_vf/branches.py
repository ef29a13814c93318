"""Branches: continuations of the current policy from mid-episode states.

A state is reached by replaying an episode (envs are deterministic under their reset seed) or by
a clone taken while it was played; ``clones`` copies it K times with fresh randomness, and the
engine lets the policy play each copy to the end. The value diagnostics use them as Monte-Carlo
ground truth, and the Monte-Carlo value arm (``rl_vf.algos.vine``) as its value estimates. A branch
never changes the episode, env or cache it starts from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np

from rl_vf.advantages import returns_to_go
from rl_vf.engine import Episode, RolloutBatch, RolloutEngine, Start


@dataclass
class BranchPoint:
    """A state of a held-out episode to branch from: its env replayed there and the transcript so far."""

    seed: int
    turn: int
    tokens: list[int]  # the transcript up to the state's first action token
    value: float  # the critic's V of the state
    token_fraction: float  # where the state sits in its episode, by tokens
    env: gym.Env  # unwrapped, at the state; only cloned, never stepped


def replay(make_env: Callable[[], gym.Env], episode: Episode, turns: int) -> tuple[gym.Env, str]:
    """A fresh env reset with the episode's seed and stepped through its first ``turns`` actions, and
    the observation it then shows."""
    env = make_env()
    obs, _ = env.reset(seed=episode.seed)
    for action in episode.actions[:turns]:
        obs, *_ = env.step(action)
    return env, obs


def clones(env: gym.Env, k: int, rng: np.random.Generator) -> list[gym.Env]:
    """K copies of ``env``, each re-seeded so the env's own randomness (an opponent) differs."""
    return [env.clone(seed=int(s)) for s in rng.integers(2**63 - 1, size=k)]


def first_action(episode: Episode) -> tuple[str, list[int]]:
    """The text and tokens of an episode's first action."""
    start = episode.action_mask.index(1)
    end = start
    while end < len(episode.tokens) and episode.action_mask[end]:
        end += 1
    return episode.actions[0], episode.tokens[start:end]


def play_on(engine: RolloutEngine, starts: list[Start], gamma: float,
            generator) -> tuple[list[float], list[float], list[Episode]]:
    """Let the policy finish every start. Per start: the discounted return from it, the critic's V of
    the start state (the sampled value at the first action token) and the episode."""
    if not starts:
        return [], [], []
    episodes = engine.collect(starts, generator)
    for start in starts:
        start.env.close()
    batch = RolloutBatch.from_episodes(episodes, engine.pad_id)
    first = batch.action_mask.argmax(1, keepdim=True)
    returns = returns_to_go(batch.rewards, batch.action_mask, gamma).gather(1, first).squeeze(1)
    return returns.tolist(), batch.sample_values.gather(1, first).squeeze(1).tolist(), episodes


def mc_state_values(engine: RolloutEngine, points: list[BranchPoint], k: int, gamma: float, generator,
                    rng: np.random.Generator) -> tuple[list[float], list[list[Episode]]]:
    """V_MC of every point (mean return of K continuations) and the continuations themselves."""
    starts = [Start(env, p.tokens) for p in points for env in clones(p.env, k, rng)]
    returns, _, episodes = play_on(engine, starts, gamma, generator)
    per_point = range(0, len(starts), k)
    return [float(np.mean(returns[i:i + k])) for i in per_point], [episodes[i:i + k] for i in per_point]


def take_actions(engine: RolloutEngine, point: BranchPoint, actions: list[tuple[str, list[int]]], k: int,
                 rng: np.random.Generator, starts: list[Start]) -> list[tuple[int, float, int | None]]:
    """K branches per action, each taking it in its own clone of the state; the branches that go on
    are appended to ``starts``. Per branch: ``(action index, reward, index in starts or None)``."""
    branches = []
    for j, (text, tokens) in enumerate(actions):
        for env in clones(point.env, k, rng):
            obs, reward, terminated, truncated, _ = env.step(text)
            if terminated or truncated:
                env.close()
                branches.append((j, float(reward), None))
            else:
                branches.append((j, float(reward), len(starts)))
                starts.append(Start(env, point.tokens + tokens + list(engine.encode(obs))))
    return branches
