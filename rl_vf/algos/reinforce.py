"""REINFORCE scored on the final outcome only: one advantage for every token of an episode."""
from __future__ import annotations

import torch

from rl_vf.advantages import discounted_returns, reinforce
from rl_vf.algos.base import Algorithm


class Reinforce(Algorithm):
    name = "reinforce"

    def advantages(self, batch, scores, cfg, reduce=None) -> tuple[torch.Tensor, None]:
        """Episode return minus ``cfg.baseline`` (none | mean | rloo | group) on every action token.

        With ``cfg.gamma`` < 1 the return is discounted once per turn, as in ppo: of two wins, the sooner
        scores more. There is no critic, so there are no value targets. The ``mean`` baseline is the
        mean over every data-parallel process's episodes (``reduce``); a group is on one process.
        """
        returns = batch.returns if cfg.gamma == 1 else discounted_returns(batch.rewards, batch.action_mask, cfg.gamma)
        mean = None
        if cfg.baseline == "mean" and reduce is not None:
            r = returns.to(torch.float32)
            mean = reduce(r.sum()) / reduce(torch.tensor(float(len(r)), device=r.device))
        return reinforce(returns, batch.action_mask, baseline=cfg.baseline, group_ids=batch.group_ids, mean=mean), None
