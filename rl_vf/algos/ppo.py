"""PPO with a learned value head: GAE credit over tokens and turns, clipped value loss."""
from __future__ import annotations

import torch

from rl_vf.advantages import gae

USES_CRITIC = True


def advantages(batch, old: dict, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (advantages, returns) from the value head's estimates (DESIGN.md GAE).

    Truncated episodes bootstrap from the value after their final observation.
    """
    last = batch.attention_mask.sum(1) - 1
    after_last = old["next_value"].gather(1, last[:, None]).squeeze(1)
    bootstrap = torch.where(batch.truncated, after_last, torch.zeros_like(after_last))
    return gae(batch.rewards, old["values"], batch.action_mask, gamma=cfg.gamma, lam=cfg.lam, bootstrap=bootstrap)
