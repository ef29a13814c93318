"""Monte-Carlo values from continuations of the current policy (after VinePPO, Kazemnejad et al.
2024): no critic is trained. At the start of each turn of a training episode, V is the mean
(discounted) return of ``vine_rollouts`` continuations of the current policy from that state, each
played from a clone of the env and a fork of the episode's KV cache (``rl_vf.branches``). The
advantages are GAE over those values (per turn, DESIGN.md), so with ``lam`` 0 each turn's advantage
is its TD error r_k + gamma V(s_{k+1}) - V(s_k); the continuations' tokens count as generated.
"""
from __future__ import annotations

import torch

from rl_vf.advantages import gae
from rl_vf.algos.base import Algorithm


class Vine(Algorithm):
    name = "vine"
    uses_branches = True

    def advantages(self, batch, scores: dict, cfg, reduce=None) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE over the branch values in ``scores["values"]`` (constant within a turn). An episode
        truncated by a limit the agent cannot see ends with V = 0 (a truncated env cannot be played on)."""
        return gae(batch.rewards, scores["values"], batch.action_mask, gamma=cfg.gamma, lam=cfg.lam)
