"""The credit-assignment methods rl_vf compares, as algorithm objects (``rl_vf.algos.base``). They
share the losses in ``rl_vf.algos.losses`` and the update loop of ``rl_vf.learner``, so they differ
only in credit. Adding one touches this package and nothing else."""
from rl_vf.algos.ppo import PPO
from rl_vf.algos.reinforce import Reinforce
from rl_vf.algos.vine import Vine

ALGOS = {algo.name: algo for algo in (PPO(), Reinforce(), Vine())}
