"""A one-step text env for fast learning tests, loaded by id as ``tests.toy_env:PickThree-v0``
(the same ``module:EnvId`` path a user's own env takes)."""
import gymnasium as gym

from envs.base import TextEnv, text_space


class PickThreeEnv(TextEnv):
    """Observation "pick:"; reward 1 for the action `target` ("3" unless set), 0 for any other string."""

    def __init__(self, target: str = "3"):
        self.target = target
        self.observation_space = text_space("pick:", 5)
        self.action_space = text_space("0123456789", 4)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return "pick:", {"invalid_action": False, "success": False}

    def step(self, action):
        ok = action.strip() == self.target
        invalid = action.strip() not in set("0123456789")
        return "pick:", float(ok), True, False, {"invalid_action": invalid, "success": ok}

    def expert_action(self, rng):
        return self.target

    def legal_actions(self):
        return list("0123456789")


if "PickThree-v0" not in gym.registry:
    gym.register("PickThree-v0", entry_point=PickThreeEnv)
