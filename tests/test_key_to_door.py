import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers KeyToDoor-v0)
from envs.key_to_door import KeyToDoorEnv
from tests.env_checks import check_env_without_warnings


def episode(env, key_action, rng, seed=None):
    """Play one episode: `key_action` on the key turn, then random valid actions.

    Returns the observations, the rewards and the infos (reset's info first)."""
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    action, terminated = key_action, False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated and not info["invalid_action"]
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        action = "01"[rng.integers(2)]
    return observations, rewards, infos


@pytest.mark.parametrize(
    "kwargs", [{}, dict(delay=0), dict(delay=64), dict(delay=3, distractor_reward_std=1.0)]
)
def test_check_env(kwargs):
    check_env_without_warnings("KeyToDoor-v0", **kwargs)


@pytest.mark.parametrize("delay", [0, 1, 5, 64, 200])
@pytest.mark.parametrize("take", [True, False])
def test_the_door_pays_only_for_the_key(delay, take):
    env = KeyToDoorEnv(delay=delay)
    rng = np.random.default_rng(delay)
    for seed in range(5):
        observations, rewards, infos = episode(env, "1" if take else "0", rng, seed)
        assert len(rewards) == delay + 2  # key, distractors, door
        assert observations == ["key?"] + ["."] * delay + ["door", "door"]
        assert rewards == [0.0] * (delay + 1) + [float(take)]
        assert [i["success"] for i in infos] == [False] * (delay + 2) + [take]
        # The value is 1 until the key is left, then exactly whether it is held.
        assert [i["value"] for i in infos] == [1.0] + [float(take)] * (delay + 2)


def test_whitespace_around_an_action_is_accepted():
    env = KeyToDoorEnv(delay=1)
    env.reset(seed=0)
    for action in [" 1\n", "\t0 ", "1"]:
        _, reward, terminated, _, info = env.step(action)
        assert not info["invalid_action"]
    assert (reward, terminated, info["success"]) == (1.0, True, True)


@pytest.mark.parametrize("std", [0.5, 2.0])
def test_distractor_rewards_have_the_configured_std_and_ignore_the_key(std):
    env = KeyToDoorEnv(delay=20, distractor_reward_std=std)
    samples = {}
    for take in (True, False):
        rng = np.random.default_rng(int(take))  # different distractor actions too
        samples[take] = np.array(
            [episode(env, "1" if take else "0", rng, seed)[1][1:-1] for seed in range(1000)]
        )
    noise = samples[True].ravel()
    assert abs(noise.mean()) < 4 * std / np.sqrt(noise.size)
    assert abs(noise.std() / std - 1) < 0.02
    # Same seeds, the other key choice and other distractor actions: the same distractor rewards.
    np.testing.assert_array_equal(samples[True], samples[False])


def test_expert_always_succeeds_and_demos_mix():
    env = KeyToDoorEnv(delay=8, distractor_reward_std=0.1)
    rng = np.random.default_rng(0)
    distractor_actions = set()
    successes = []
    for seed in range(200):
        env.reset(seed=seed)
        terminated, turn = False, 0
        while not terminated:
            expert = env.expert_action(rng)
            assert expert in env.legal_actions() == ["1", "0"]
            if turn == 0:
                assert expert == "1"
            elif turn <= 8:
                distractor_actions.add(expert)
            action = env.demo_action(rng, expert_prob=0.5) if turn == 0 else expert
            _, reward, terminated, _, info = env.step(action)
            turn += 1
        successes.append(info["success"])
    assert distractor_actions == {"0", "1"}
    assert 0.6 < np.mean(successes) < 0.9  # the key is taken with probability 0.5 + 0.5 / 2


def test_deterministic_under_seed():
    def run(seed):
        env = KeyToDoorEnv(delay=5, distractor_reward_std=1.0)
        return [episode(env, "1", np.random.default_rng(0), seed if i == 0 else None)[1]
                for i in range(10)]

    assert run(7) == run(7)
    assert run(7) != run(8)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3), st.text())
def test_any_string_action_is_handled(turn, action):
    env = KeyToDoorEnv(delay=2, distractor_reward_std=1.0)
    env.reset(seed=0)
    for _ in range(turn):
        env.step("1")
    before = env.clone()
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and not truncated
    valid = action.strip() in ("0", "1")
    assert info["invalid_action"] == (not valid)
    if valid:
        assert (obs, reward, terminated, truncated, info) == before.step(action.strip())
    else:
        assert (reward, terminated, info["value"], info["success"]) == (0.0, True, 0.0, False)


def test_non_string_action_is_a_type_error():
    env = KeyToDoorEnv()
    env.reset(seed=0)
    with pytest.raises(TypeError):
        env.step(1)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(delay=-1), r"delay=-1.*int >= 0"),
        (dict(delay=2.5), r"delay=2.5"),
        (dict(distractor_reward_std=-0.5), r"distractor_reward_std=-0.5.*>= 0"),
        (dict(distractor_reward_std=float("nan")), r"distractor_reward_std=nan"),
    ],
)
def test_bad_arguments_raise(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        KeyToDoorEnv(**kwargs)


@pytest.mark.parametrize("take", ["1", "0"])
def test_without_choices_after_the_key_only_the_key_is_a_choice(take):
    env = KeyToDoorEnv(delay=3, choices_after_key=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("KeyToDoor-v0", delay=3, choices_after_key=False).unwrapped)
    env.reset(seed=0)
    assert env.legal_actions() == ["1", "0"]
    env.step(take)
    rewards = []
    for _ in range(4):  # 3 distractors and the door: one legal action each
        assert env.legal_actions() == ["0"]
        obs, reward, terminated, _, info = env.step("0")
        rewards.append(reward)
        assert not info["invalid_action"]
    assert terminated and rewards == [0.0, 0.0, 0.0, float(take == "1")] and info["success"] == (take == "1")
    env.reset(seed=0)
    env.step("1")
    obs, reward, terminated, _, info = env.step("1")  # "1" after the key is invalid here
    assert terminated and reward == 0.0 and info["invalid_action"] and info["value"] == 0.0


def test_choices_after_key_must_be_a_bool():
    with pytest.raises(ValueError, match="choices_after_key='no'"):
        KeyToDoorEnv(choices_after_key="no")
