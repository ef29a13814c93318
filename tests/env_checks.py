"""Checks every env's tests share."""
import warnings

import gymnasium as gym
from gymnasium.utils.env_checker import check_env


def check_env_without_warnings(env_id: str, **kwargs) -> dict:
    """gymnasium's ``check_env`` on ``env_id``, then a reset and a random action through the checker
    wrappers that ``gym.make`` adds; any warning fails. Returns the reset's info."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id, **kwargs)
        check_env(env.unwrapped)
        _, info = env.reset(seed=0)
        env.step(env.action_space.sample())
    env.close()
    return info
