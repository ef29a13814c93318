"""PPO with a learned value head: GAE credit over turns, value loss towards the returns."""
from __future__ import annotations

import torch

from rl_vf.advantages import gae
from rl_vf.algos.base import Algorithm
from rl_vf.algos.losses import value_loss


class PPO(Algorithm):
    name = "ppo"
    uses_critic = True

    def advantages(self, batch, scores: dict, cfg, reduce=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token (advantages, returns) from the critic's estimates (DESIGN.md GAE, per turn).

        The advantages are GAE with ``cfg.lam``; the returns (value targets) GAE with ``cfg.lam_critic``
        (decoupled GAE, VC-PPO/VAPO), or with ``cfg.lam`` too when it is None. Truncated episodes
        bootstrap from the value after their final observation.
        """
        last = batch.attention_mask.sum(1) - 1
        after_last = scores["next_value"].gather(1, last[:, None]).squeeze(1)
        bootstrap = torch.where(batch.truncated, after_last, torch.zeros_like(after_last))

        def gae_with(lam: float) -> tuple[torch.Tensor, torch.Tensor]:
            return gae(batch.rewards, scores["values"], batch.action_mask, gamma=cfg.gamma, lam=lam, bootstrap=bootstrap)

        advantages, returns = gae_with(cfg.lam)
        if cfg.lam_critic is not None and cfg.lam_critic != cfg.lam:
            returns = gae_with(cfg.lam_critic)[1]
        return advantages, returns

    def loss_terms(self, new, old, returns, sl, mask, cfg):
        vf = value_loss(new["values"], old["values"][sl], returns[sl], mask, cfg.vf_clip or None)
        return {"loss/vf": (vf, cfg.vf_coef)}
