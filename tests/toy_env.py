"""A one-step text env for fast learning tests, loaded by id as ``tests.toy_env:PickThree-v0``
(the same ``module:EnvId`` path a user's own env takes)."""
import gymnasium as gym

from envs.base import TextEnv, text_space


class PickThreeEnv(TextEnv):
    """Observation "pick:"; reward 1 for the action `target` ("3" unless set), 0 for any other string.
    `success_key`: the info key of its success flag ("success", SB3's "is_success", or None: none)."""

    def __init__(self, target: str = "3", success_key: str | None = "success"):
        self.target, self.success_key = target, success_key
        self.observation_space = text_space("pick:", 5)
        self.action_space = text_space("0123456789", 4)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return "pick:", {"invalid_action": False, **self._success(False)}

    def step(self, action):
        ok = action.strip() == self.target
        invalid = action.strip() not in set("0123456789")
        return "pick:", float(ok), True, False, {"invalid_action": invalid, **self._success(ok)}

    def _success(self, ok: bool) -> dict:
        return {self.success_key: ok} if self.success_key else {}

    def expert_action(self, rng):
        return self.target

    def legal_actions(self):
        return list("0123456789")


if "PickThree-v0" not in gym.registry:
    gym.register("PickThree-v0", entry_point=PickThreeEnv)
