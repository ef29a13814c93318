"""What an algorithm is to the trainer: whether it trains a critic, how it turns a scored batch into
advantages, and which loss terms it adds to the policy terms every algorithm shares."""
from __future__ import annotations

import torch


class Algorithm:
    """The defaults: no critic, no branches, no loss terms of its own."""

    name = ""
    uses_critic = False  # trains a value function (critic warm-up, value diagnostics, vf_loss)
    uses_branches = False  # asks the actor for Monte-Carlo continuations from mid-episode states

    def advantages(self, batch, scores: dict | None, cfg, reduce=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token ``(advantages, returns)`` (returns: value targets, or None without a critic).
        ``scores``: the batch scored before the update (``learner.score_batch``; empty where the
        learner skips that pass), with ``values`` from branches for an algorithm that uses them.
        ``reduce``: sums a tensor over data-parallel processes, for a statistic of the whole batch."""
        raise NotImplementedError

    def loss_terms(self, new: dict, old: dict | None, returns: torch.Tensor | None, sl, mask: torch.Tensor,
                   cfg) -> dict[str, tuple[torch.Tensor, float]]:
        """Named extra loss terms on part ``sl`` of a minibatch, each with its weight in the loss."""
        return {}
