import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers Arithmetic-v0)
from envs.arithmetic import ArithmeticEnv, Problem, can_still_succeed, grade
from tests.env_checks import check_env_without_warnings

CONFIGS = [
    dict(op=op, mode=mode, digits=digits)
    for op in ("add", "sub", "mul")
    for mode in ("single", "multi")
    for digits in (1, 2, 4)
]


def play(env, actions):
    """Step `actions` in turn; returns the (obs, reward, terminated, truncated, info) of each."""
    return [env.step(action) for action in actions]


def expert_episode(env, seed):
    """The expert's actions and the final step of one episode."""
    env.reset(seed=seed)
    actions, terminated = [], False
    while not terminated:
        actions.append(env.expert_action(np.random.default_rng(0)))
        assert env.action_space.contains(actions[-1])
        last = env.step(actions[-1])
        terminated = last[2]
    return actions, last


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        *(dict(op=op, mode=mode) for op in ("add", "sub", "mul") for mode in ("single", "multi")),
        dict(op="mul", digits=3, grade_steps=True),
        dict(op="sub", digits=1, mode="multi"),
    ],
)
def test_check_env(kwargs):
    check_env_without_warnings("Arithmetic-v0", **kwargs)


@pytest.mark.parametrize(
    "problem, steps, answer",
    [
        (Problem(47, 85, "add"), ("12", "13"), "132"),
        (Problem(85, 47, "sub"), ("18", "03"), "38"),
        (Problem(47, 85, "mul"), ("235", "376"), "3995"),
        (Problem(100, 1, "sub"), ("19", "19", "00"), "99"),
        (Problem(3, 9, "add"), ("12",), "12"),
    ],
)
def test_known_scratchpads(problem, steps, answer):
    assert (problem.steps, problem.answer) == (steps, answer)
    assert problem.solution == " ".join(steps) + "=" + answer


def test_subtraction_with_a_below_b_is_rejected():
    with pytest.raises(ValueError, match="Problem"):
        Problem(3, 5, "sub")


@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_expert_always_succeeds_and_scratchpad_means_what_it_says(kwargs):
    env = ArithmeticEnv(**kwargs)
    for seed in range(100):
        actions, (obs, reward, _, truncated, info) = expert_episode(env, seed)
        p = env.unwrapped.problem
        assert (reward, truncated, info["success"], info["value"]) == (1.0, False, True, 1.0)
        assert len(actions) == (1 if kwargs["mode"] == "single" else kwargs["digits"] + 1)
        assert obs == p.text + ":" and env.observation_space.contains(obs)
        # Operands have exactly `digits` digits; subtraction never goes negative.
        assert len(str(p.a)) == len(str(p.b)) == kwargs["digits"]
        assert p.b <= p.a or kwargs["op"] != "sub"
        # Check the scratchpad against plain arithmetic, independently of how it was built.
        d = kwargs["digits"]
        if kwargs["op"] == "mul":
            assert sum(int(s) * 10**i for i, s in enumerate(p.steps)) == p.a * p.b
            assert all(int(s) == p.a * int(digit) for s, digit in zip(p.steps, str(p.b)[::-1]))
        else:
            digits = "".join(s[1] for s in reversed(p.steps))
            carry = int(p.steps[-1][0])
            sign = 1 if kwargs["op"] == "add" else -1
            assert int(digits) + sign * carry * 10**d == p.a + sign * p.b
        assert int(p.answer) == {"add": p.a + p.b, "sub": p.a - p.b, "mul": p.a * p.b}[kwargs["op"]]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=str)
def test_action_budget_is_the_longest_right_action(kwargs):
    env = ArithmeticEnv(**kwargs)
    d = kwargs["digits"]
    nines, one_then_zeros = 10**d - 1, 10 ** (d - 1)
    extremes = [Problem(nines, nines, kwargs["op"]), Problem(nines, one_then_zeros, kwargs["op"])]
    if kwargs["mode"] == "single":
        longest = max(len(p.solution) for p in extremes)
    else:
        longest = max(len(item) for p in extremes for item in [*p.steps, p.answer])
    assert env.action_space.max_length == longest


@pytest.mark.parametrize(
    "prefix, graded, ungraded",
    [
        ("", True, True),
        ("1", True, True),
        ("12 1", True, True),
        ("12 13", True, True),
        ("12 13=13", True, True),
        ("12 13=132", True, True),
        ("  12 13=132 \t", True, True),  # the env strips actions
        ("12 13=133", False, False),  # a wrong answer digit
        ("12 13=1320", False, False),
        ("12 13=0132", False, False),
        ("12 13=13 2", False, False),
        ("12 14", False, True),  # a wrong column: only fatal when steps are graded
        ("12 14=132", False, True),
        ("2", False, True),
        ("99 99=1", False, True),
        ("12 13 14", False, False),  # too many steps
        ("12=132", False, False),  # too few
        ("12  13=132", False, False),
        ("12 13==132", False, False),
        ("12 1a", False, False),
        ("12 13=", True, True),
    ],
)
def test_can_still_succeed_on_hand_written_prefixes(prefix, graded, ungraded):
    problem = Problem(47, 85, "add")
    assert can_still_succeed(problem, prefix, grade_steps=True) == graded
    assert can_still_succeed(problem, prefix, grade_steps=False) == ungraded


@pytest.mark.parametrize("grade_steps", [True, False])
def test_can_still_succeed_agrees_with_brute_force(grade_steps):
    # Every prefix of up to 3 characters over a small alphabet is reachable exactly when some
    # string of up to 8 characters that starts with it is graded right.
    problem = Problem(3, 9, "add")  # "12=12"
    alphabet = "12= "
    right = {
        text
        for n in range(1, 9)
        for text in map("".join, itertools.product(alphabet, repeat=n))
        if grade(problem, text, grade_steps)
    }
    for n in range(4):  # a prefix's shortest right completion, "12=12", has 5 characters
        for prefix in map("".join, itertools.product(alphabet, repeat=n)):
            expected = any(text.startswith(prefix) for text in right)
            assert can_still_succeed(problem, prefix, grade_steps) == expected, prefix


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("wrong_step", [0, 1, 2])
def test_multi_mode_doom_flag_flips_at_the_first_wrong_step(op, wrong_step):
    env = ArithmeticEnv(op=op, digits=3, mode="multi", grade_steps=True)
    for seed in range(10):
        _, info = env.reset(seed=seed)
        flags = [info["reachable"]]
        p = env.unwrapped.problem
        items = [*p.steps, p.answer]
        for i, item in enumerate(items):
            if i == wrong_step:
                item = env.legal_actions()[1]  # the right action, off by one
            _, reward, terminated, _, info = env.step(item)
            assert info["value"] == float(info["reachable"]) and not info["invalid_action"]
            flags.append(info["reachable"])
        assert terminated and reward == 0.0
        assert flags == [True] * (wrong_step + 1) + [False] * (len(items) - wrong_step)


def test_a_step_cut_short_is_wrong_in_multi_mode():
    # "1" is the start of the right step "12", but a multi-mode step is complete as written.
    for steps_written in (["1"], ["12", "1"]):
        env = ArithmeticEnv(mode="multi", grade_steps=True)
        env.reset(seed=0)
        env.unwrapped.problem = Problem(47, 85, "add")
        *_, info = play(env, steps_written)[-1]
        assert not info["reachable"] and not info["invalid_action"]


def test_ungraded_steps_only_the_answer_dooms():
    env = ArithmeticEnv(digits=3, mode="multi")
    env.reset(seed=0)
    p = env.unwrapped.problem
    for _ in p.steps:  # every step wrong
        *_, info = env.step(env.legal_actions()[2])
        assert info["reachable"]
    _, reward, terminated, _, info = env.step(p.answer)
    assert (reward, terminated, info["success"]) == (1.0, True, True)
    env.reset(seed=0)
    play(env, p.steps)
    _, reward, _, _, info = env.step(env.legal_actions()[1])
    assert (reward, info["reachable"], info["success"]) == (0.0, False, False)


def test_single_mode_reward_and_reachable_follow_the_whole_action():
    for grade_steps, rewards in [(False, [1, 1, 1, 1, 1, 0, 0]), (True, [1, 0, 0, 0, 0, 0, 0])]:
        env = ArithmeticEnv(grade_steps=grade_steps)
        env.reset(seed=1)
        got = []
        for action in env.legal_actions():  # the right one, then each item off by one
            clone = env.clone()
            _, reward, terminated, _, info = clone.step(action)
            assert terminated and not info["invalid_action"]
            assert info["reachable"] == info["success"] == (reward == 1.0)
            got.append(reward)
        assert got == rewards


def test_demonstrations_mix_in_mistakes():
    env = ArithmeticEnv(mode="multi", digits=2)
    rng = np.random.default_rng(0)
    rewards = []
    for seed in range(200):
        env.reset(seed=seed)
        terminated = False
        while not terminated:
            action = env.demo_action(rng, expert_prob=0.5)
            assert action in env.legal_actions()
            _, reward, terminated, _, info = env.step(action)
        rewards.append(reward)
    assert 0.2 < np.mean(rewards) < 0.9


def test_deterministic_under_seed():
    def problems(seed):
        env = ArithmeticEnv(op="sub", digits=3)
        return [env.reset(seed=seed)[0]] + [env.reset()[0] for _ in range(20)]

    assert problems(7) == problems(7)
    assert problems(7) != problems(8)


SINGLE = re.compile(r"[0-9]+ [0-9]+=[0-9]+")  # the 2-digit single-mode format, written out


@settings(max_examples=300, deadline=None)
@given(st.text() | st.from_regex(SINGLE, fullmatch=True))
def test_any_string_is_handled_in_single_mode(action):
    env = ArithmeticEnv()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and terminated and not truncated
    valid = SINGLE.fullmatch(action.strip()) is not None
    assert info["invalid_action"] == (not valid)
    assert reward == float(valid and action.strip().endswith("=" + env.unwrapped.problem.answer))
    assert info["reachable"] == info["success"] == (reward == 1.0)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_string_is_handled_in_multi_mode(action):
    env = ArithmeticEnv(mode="multi")
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and reward == 0.0 and not truncated
    valid = re.fullmatch("[0-9]+", action.strip()) is not None
    assert info["invalid_action"] == (not valid) == terminated


def test_non_string_action_is_a_type_error():
    env = ArithmeticEnv()
    env.reset(seed=0)
    with pytest.raises(TypeError):
        env.step(12)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(op="div"), r"op='div'.*'add', 'sub', 'mul'"),
        (dict(mode="batch"), r"mode='batch'.*'single', 'multi'"),
        (dict(digits=0), r"digits=0.*\[1, 18\]"),
        (dict(digits=19), r"digits=19"),
        (dict(digits=2.0), r"digits=2.0"),
    ],
)
def test_bad_arguments_raise(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        ArithmeticEnv(**kwargs)
