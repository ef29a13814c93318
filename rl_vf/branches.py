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
import torch

from rl_vf.advantages import returns_to_go, turn_starts
from rl_vf.engine import Episode, Fork, RolloutBatch, RolloutEngine, Start, copy_env


@dataclass
class BranchPoint:
    """A state of a held-out episode to branch from: its env replayed there and the transcript so far."""

    seed: int
    turn: int
    tokens: list[int]  # the transcript up to the state's first action token
    value: float  # the critic's V of the state
    token_fraction: float  # where the state sits in its episode, by tokens
    env: gym.Env  # at the state (a hidden TimeLimit's steps left included); only copied, never stepped


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
    return [copy_env(env, seed=int(s)) for s in rng.integers(2**63 - 1, size=k)]


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


# ---- Monte-Carlo values of every turn (the vine arm) ---------------------------------------------
@torch.no_grad()
def prefix_cache(policy, episodes: list[Episode], pad_id: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The policy LM's keys and values (B, heads, T, dim) per layer over the episodes' whole
    transcripts (right-padded; causal, so any prefix's columns are the prefix's own cache)."""
    batch = RolloutBatch.from_episodes(episodes, pad_id).to(device)
    cache = policy.new_cache(values=False)
    policy(batch.tokens, attention_mask=batch.attention_mask, past_key_values=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.lm.layers]


def discounted_return(episode: Episode, gamma: float) -> float:
    """The return of an episode's own turns (a prompt's tokens have no reward), discounted once per turn."""
    total, turn = 0.0, -1
    for t, (is_action, reward) in enumerate(zip(episode.action_mask, episode.rewards)):
        if is_action and (t == 0 or not episode.action_mask[t - 1]):
            turn += 1
        total += gamma ** max(turn, 0) * reward
    return total


def turn_values(engine: RolloutEngine, episodes: list[Episode], k: int, gamma: float, generator,
                rng: np.random.Generator) -> tuple[list[list[float]], int]:
    """V of the state at the start of every turn of every episode (played with ``snapshots``): the
    mean discounted return of K continuations of the policy, each from a re-seeded copy of the
    state (``Episode.states``) and a fork of the episode's KV cache. Returns the values per episode
    and turn, and the continuations' generated tokens. The episodes are only read."""
    values: list[list[float]] = []
    generated = 0
    per_chunk = max(1, len(engine.envs) // k)  # episodes whose branches are played together
    for first in range(0, len(episodes), per_chunk):
        chunk = episodes[first:first + per_chunk]
        layers = prefix_cache(engine.policy, chunk, engine.pad_id, engine.device)
        forks, turns = [], []
        for b, episode in enumerate(chunk):
            starts = turn_starts(episode.action_mask)
            if len(starts) != len(episode.states):
                raise ValueError(f"an episode of {len(starts)} turns has {len(episode.states)} env snapshots: "
                                 f"play it with RolloutEngine(snapshots=True), and every observation must be "
                                 f"at least one token")
            turns.append(len(starts))
            for start, state in zip(starts, episode.states):
                kv = [(keys[b, :, : start - 1], vals[b, :, : start - 1]) for keys, vals in layers]
                forks += [Fork(env, episode.tokens[:start], kv) for env in clones(state, k, rng)]
        played = engine.collect(forks, generator)
        for fork in forks:
            fork.env.close()
        returns = iter([discounted_return(e, gamma) for e in played])
        values += [[float(np.mean([next(returns) for _ in range(k)])) for _ in range(n)] for n in turns]
        generated += sum(sum(e.action_mask) for e in played)
    return values, generated


def turn_values_tensor(values: list[list[float]], mask: torch.Tensor) -> torch.Tensor:
    """(B, T): each action token gets the value of its turn's state; 0 elsewhere."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    for b, (row, per_turn) in enumerate(zip(mask.tolist(), values)):
        turn = -1
        for t, is_action in enumerate(row):
            if is_action:
                turn += (t == 0 or not row[t - 1])
                out[b, t] = per_turn[turn]
    return out.to(mask.device)
