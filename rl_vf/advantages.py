"""Credit assignment on the token-level MDP of DESIGN.md.

Every tensor is (B, T) over one episode transcript per row; ``mask`` is 1 on action tokens.
A *turn* is a maximal run of consecutive action tokens; the reward of env step k sits on the
last token of turn k. Observation and padding tokens are skipped, never decayed through.
"""
from __future__ import annotations

from typing import Sequence

import torch

BASELINES = ("none", "mean", "rloo", "group")


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    bootstrap: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over action tokens, with ``gamma`` and ``lam`` applied once
    per turn boundary (once per env step), never per token, so the credit horizon counts decisions.

    The next value of an action token is the value of the next action token of the episode
    (for the last token of a turn: the first token of the next turn, discounted by ``gamma``
    once). Within a turn tokens chain with discount 1 and lambda 1; across a boundary the next
    advantage is weighted by ``gamma * lam``. For token t of turn k, with s_{k+1} the first token
    of the next turn: A_t = r_k + gamma V(s_{k+1}) - V(t) + gamma lam A(s_{k+1}).
    After the last action token the next value is ``bootstrap`` (truncated episodes) or 0.
    Returns ``(advantages, returns)``, zero where ``mask == 0``.
    """
    mask_f = mask.to(values.dtype)
    rewards = rewards.to(values.dtype) * mask_f
    values = values * mask_f
    B, T = values.shape
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    if bootstrap is not None:
        next_value = bootstrap.to(values.dtype)
    next_adv = torch.zeros_like(next_value)
    # gamma (and lam) between this token and the next action token: 1 inside a turn, gamma (lam)
    # across a turn boundary (and before the bootstrap value, which belongs to the next turn).
    next_discount = torch.full_like(next_value, gamma)
    next_lam = torch.full_like(next_value, lam)
    advantages = torch.zeros_like(values)
    is_action = mask.bool()
    for t in range(T - 1, -1, -1):
        act = is_action[:, t]
        delta = rewards[:, t] + next_discount * next_value - values[:, t]
        adv = delta + next_discount * next_lam * next_adv
        advantages[:, t] = torch.where(act, adv, torch.zeros_like(adv))
        next_value = torch.where(act, values[:, t], next_value)
        next_adv = torch.where(act, adv, next_adv)
        # Token t-1 is in the same turn only if it is an action token too; if t-1 is an
        # observation token, the next action token before it starts a new turn.
        next_discount = torch.where(act, torch.ones_like(next_discount), torch.full_like(next_discount, gamma))
        next_lam = torch.where(act, torch.ones_like(next_lam), torch.full_like(next_lam, lam))
    returns = (advantages + values) * mask_f
    return advantages, returns


def turn_starts(action_mask: Sequence[int]) -> list[int]:
    """Index of the first action token of every turn (a turn is a run of action tokens)."""
    return [t for t, m in enumerate(action_mask) if m and (t == 0 or not action_mask[t - 1])]


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T) Monte-Carlo return from each action token on, discounted once per turn (no bootstrap)."""
    return gae(rewards, torch.zeros_like(rewards, dtype=torch.float32), mask, gamma=gamma, lam=1.0)[1]


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Each episode's return from its first turn, the reward of turn k discounted by ``gamma ** k``
    (shape (B,)); with gamma 1 the sum of its rewards."""
    first_action = mask.to(torch.int8).argmax(1, keepdim=True)
    return returns_to_go(rewards, mask, gamma).gather(1, first_action).squeeze(1)


def episode_baseline(
    episode_returns: torch.Tensor, baseline: str, group_ids: torch.Tensor | None = None, eps: float = 1e-6,
    mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-episode REINFORCE advantage: return minus a baseline (shape (B,)).

    ``none``: R. ``mean``: R - batch mean (``mean``, where the batch spans processes). ``rloo``: R - mean of the *other* episodes of the
    same group. ``group``: (R - group mean) / (group std + eps), GRPO-style; a group whose
    returns are all equal gets advantage 0. ``group_ids`` marks the K episodes that share an
    initial state; rloo and group need at least 2 episodes in every group.
    """
    R = episode_returns.to(torch.float32)
    if baseline == "none":
        return R.clone()
    if baseline == "mean":
        return R - (R.mean() if mean is None else mean)
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if group_ids is None:
        raise ValueError(f"baseline {baseline!r} needs group_ids (K episodes per initial state)")
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if (counts < 2).any():
        raise ValueError(f"baseline {baseline!r} needs >= 2 episodes per group, got a group of {int(counts.min())}")
    n = counts[inverse].to(R.dtype)
    group_sum = torch.zeros(len(counts), dtype=R.dtype, device=R.device).index_add_(0, inverse, R)[inverse]
    if baseline == "rloo":
        return R - (group_sum - R) / (n - 1)
    mean = group_sum / n
    sq = torch.zeros(len(counts), dtype=R.dtype, device=R.device).index_add_(0, inverse, (R - mean) ** 2)[inverse]
    std = (sq / (n - 1)).sqrt()  # unbiased, as torch.std and GRPO
    return torch.where(std > 0, (R - mean) / (std + eps), torch.zeros_like(R))


def reinforce(
    episode_returns: torch.Tensor,
    mask: torch.Tensor,
    baseline: str = "mean",
    group_ids: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final-outcome credit: every action token of an episode gets the same advantage."""
    per_episode = episode_baseline(episode_returns, baseline, group_ids, mean=mean)
    return per_episode[:, None] * mask.to(per_episode.dtype)
