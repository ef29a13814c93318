"""REINFORCE scored on the final outcome only: one advantage for every token of an episode."""
from __future__ import annotations

import torch

from rl_vf.advantages import reinforce

USES_CRITIC = False


def advantages(batch, old: dict, cfg) -> tuple[torch.Tensor, None]:
    """Episode return minus ``cfg.baseline`` (none | mean | rloo | group) on every action token.

    There is no critic, so there are no value targets.
    """
    return reinforce(batch.returns, batch.action_mask, baseline=cfg.baseline, group_ids=batch.group_ids), None
