
import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers Decisions-v0 and DoomedStep-v0)
from envs.decisions import DecisionsEnv
from envs.doomed_step import DoomedStepEnv
from tests.env_checks import check_env_without_warnings

CASES = [
    ("Decisions-v0", {}),
    ("Decisions-v0", dict(n=1)),
    ("Decisions-v0", dict(n=3, feedback=False)),
    ("Decisions-v0", dict(n=1, feedback=False)),
    ("DoomedStep-v0", {}),
    ("DoomedStep-v0", dict(length=1)),
    ("DoomedStep-v0", dict(length=3)),
]


def make(env_id, kwargs):
    return gym.make(env_id, disable_env_checker=True, **kwargs).unwrapped


def turns(env):
    return env.n if isinstance(env, DecisionsEnv) else env.length


def wrong(env):
    return "0" if env.expert_action(None) == "1" else "1"


def play(env, policy):
    """Step `env` with `policy(env)` to the end; the transcript (obs, reward, terminated, info)."""
    transcript, terminated = [], False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(policy(env))
        assert not truncated and not info["invalid_action"]
        transcript.append((obs, reward, terminated, info))
    return transcript


def random_policy(rng):
    return lambda env: env.legal_actions()[int(rng.integers(2))]


@pytest.mark.parametrize("env_id, kwargs", CASES)
def test_check_env(env_id, kwargs):
    check_env_without_warnings(env_id, **kwargs)


@pytest.mark.parametrize("env_id, kwargs", CASES)
def test_deterministic_under_seed(env_id, kwargs):
    def run(seed):
        env, rng = make(env_id, kwargs), np.random.default_rng(0)
        episodes = []
        for i in range(20):
            obs, info = env.reset(seed=seed if i == 0 else None)
            episodes.append([(obs, info)] + play(env, random_policy(rng)))
        return episodes

    assert run(7) == run(7)
    assert run(7) != run(8)  # the same agent, so only the letters can differ


@pytest.mark.parametrize("env_id, kwargs", CASES)
@settings(max_examples=50, deadline=None)
@given(turn=st.integers(0, 2), action=st.text())
def test_any_string_action_is_handled(env_id, kwargs, turn, action):
    env = make(env_id, kwargs)
    env.reset(seed=0)
    for _ in range(min(turn, turns(env) - 1)):
        env.step("1")
    before = env.clone()
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and not truncated
    valid = action.strip() in ("0", "1")
    assert info["invalid_action"] == (not valid)
    if valid:
        assert (obs, reward, terminated, truncated, info) == before.step(action.strip())
    else:
        assert (obs, reward, terminated) == (before._observation(), 0.0, True)
        assert (info["value"], info["success"]) == (0.0, False)


@pytest.mark.parametrize("env_id", ["Decisions-v0", "DoomedStep-v0"])
def test_non_string_action_is_a_type_error(env_id):
    env = make(env_id, {})
    env.reset(seed=0)
    with pytest.raises(TypeError):
        env.step(1)


@pytest.mark.parametrize("feedback", [True, False])
def test_decisions_hand_checked_episode(feedback):
    env = DecisionsEnv(n=3, feedback=feedback)
    obs, info = env.reset(seed=0)
    observations, letters, values, rewards = [obs], [obs], [info["value"]], []
    for right in (True, False, True):
        assert env.expert_action(None) == {"a": "1", "b": "0"}[letters[-1]]
        obs, reward, terminated, _, info = env.step(env.expert_action(None) if right else wrong(env))
        observations.append(obs)
        letters.append(obs[-1])
        values.append(info["value"])
        rewards.append(reward)
    assert terminated and not info["success"]
    assert rewards == [0.0, 0.0, 2 / 3]
    assert values == [1.0, 1.0, 2 / 3, 2 / 3]
    marks = ["", "+", "-", "+"] if feedback else ["", "", "", ""]
    assert observations == [m + letter for m, letter in zip(marks, letters[:3])] + [marks[3] or "="]
    assert set(letters[:3]) <= {"a", "b"}


def test_decisions_all_right_succeeds():
    env = DecisionsEnv(n=4)
    env.reset(seed=1)
    *_, (obs, reward, terminated, info) = play(env, lambda e: e.expert_action(None))
    assert (obs, reward, terminated, info["success"], info["value"]) == ("+", 1.0, True, True, 1.0)


@pytest.mark.parametrize("wrong_turn", [0, 1, 2])
def test_doomed_step_hand_checked_episode(wrong_turn):
    env = DoomedStepEnv(length=3)
    obs, info = env.reset(seed=0)
    observations, values, rewards = [obs], [info["value"]], []
    for turn in range(3):
        obs, reward, terminated, _, info = env.step(wrong(env) if turn == wrong_turn else env.expert_action(None))
        observations.append(obs)
        values.append(info["value"])
        rewards.append(reward)
    assert terminated and not info["success"]
    assert rewards == [0.0, 0.0, 0.0]
    assert values == [1.0] * (wrong_turn + 1) + [0.0] * (3 - wrong_turn)
    marks = "o" * (wrong_turn + 1) + "x" * (3 - wrong_turn)
    assert [o[0] for o in observations] == list(marks)
    assert all(o[1:] in ("a", "b") for o in observations[:3]) and observations[3] == "x"


def test_doomed_step_never_wrong_succeeds():
    env = DoomedStepEnv(length=3)
    env.reset(seed=0)
    transcript = play(env, lambda e: e.expert_action(None))
    assert [t[1] for t in transcript] == [0.0, 0.0, 1.0]
    assert transcript[-1][0] == "o" and transcript[-1][3]["success"]


@pytest.mark.parametrize("env_id, kwargs", CASES)
def test_value_is_what_the_expert_earns(env_id, kwargs):
    env, rng = make(env_id, kwargs), np.random.default_rng(0)
    for seed in range(5):
        _, info = env.reset(seed=seed)
        for _ in range(int(rng.integers(turns(env)))):  # a random state short of the end
            *_, info = env.step(random_policy(rng)(env))
        for k in range(200):
            clone = env.clone(seed=k)
            assert play(clone, lambda e: e.expert_action(None))[-1][1] == info["value"]


@pytest.mark.parametrize(
    "env_id, kwargs, mean, std",
    [
        ("Decisions-v0", dict(n=8), 0.5, np.sqrt(0.25 / 8)),  # Binomial(8, 1/2) / 8
        ("Decisions-v0", dict(n=1, feedback=False), 0.5, 0.5),
        ("DoomedStep-v0", dict(length=3), 0.5**3, np.sqrt(0.5**3 * (1 - 0.5**3))),
    ],
)
def test_random_policy_return_matches_analytic_value(env_id, kwargs, mean, std):
    env, rng = make(env_id, kwargs), np.random.default_rng(0)
    env.reset(seed=0)
    returns = [play(env.clone(seed=k), random_policy(rng))[-1][1] for k in range(2000)]
    assert abs(np.mean(returns) - mean) < 4 * std / np.sqrt(len(returns))


@pytest.mark.parametrize("env_id, kwargs", CASES)
def test_clone_continues_identically_and_independently(env_id, kwargs):
    env = make(env_id, kwargs)
    obs, info = env.reset(seed=3)
    if turns(env) > 1:
        obs, *_, info = env.step("1")
    clone = env.clone()
    from_clone = play(clone, random_policy(np.random.default_rng(1)))
    assert (env._observation(), env._info()) == (obs, info)  # stepping the clone leaves it alone
    assert play(env, random_policy(np.random.default_rng(1))) == from_clone


@pytest.mark.parametrize(
    "make_env, bad",
    [
        (lambda: DecisionsEnv(n=0), r"n=0.*int >= 1"),
        (lambda: DecisionsEnv(n=2.5), r"n=2.5"),
        (lambda: DecisionsEnv(feedback="yes"), r"feedback='yes'.*bool"),
        (lambda: DoomedStepEnv(length=0), r"length=0.*int >= 1"),
        (lambda: DoomedStepEnv(length=None), r"length=None"),
    ],
)
def test_bad_arguments_raise(make_env, bad):
    with pytest.raises(ValueError, match=bad):
        make_env()
