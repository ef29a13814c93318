"""The two credit-assignment methods rl_vf compares. Each module exposes ``USES_CRITIC`` and
``advantages(batch, old, cfg) -> (advantages, returns_or_None)``; both share the losses in
``rl_vf.algos.losses`` and the update loop in ``rl_vf.trainer``, so they differ only in credit."""
from rl_vf.algos import ppo, reinforce

ALGOS = {"ppo": ppo, "reinforce": reinforce}
