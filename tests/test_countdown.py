from fractions import Fraction
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers Countdown-v0)
from envs.countdown import MAX_NESTING, CountdownEnv, check, evaluate, parse
from tests.env_checks import check_env_without_warnings

NUMBERS, TARGET = (25, 5, 4), 80


@lru_cache(maxsize=None)
def reachable_values(numbers: tuple[Fraction, ...]) -> frozenset[Fraction]:
    """Every value of an expression using each of `numbers` exactly once (brute force)."""
    if len(numbers) == 1:
        return frozenset(numbers)
    values = set()
    n = len(numbers)
    for mask in range(1, 2**n - 1):  # every split into two non-empty groups
        left = tuple(x for i, x in enumerate(numbers) if mask >> i & 1)
        right = tuple(x for i, x in enumerate(numbers) if not mask >> i & 1)
        for x in reachable_values(left):
            for y in reachable_values(right):
                values.update({x + y, x - y, x * y})
                if y:
                    values.add(x / y)
    return frozenset(values)


@pytest.mark.parametrize(
    "kwargs", [{}, dict(count=4), dict(count=2, max_number=9, max_target=9, format_reward=0.1)]
)
def test_check_env(kwargs):
    check_env_without_warnings("Countdown-v0", **kwargs)


@pytest.mark.parametrize(
    "text, value",
    [
        ("2+3*4", 14),
        ("2*3+4", 10),
        ("(2+3)*4", 20),
        ("8-3-2", 3),  # left to right
        ("8-(3-2)", 7),
        ("8/4/2", 1),
        ("8/3", Fraction(8, 3)),  # exact, not integer division
        ("7/2*2", 7),
        ("2*3/4", Fraction(3, 2)),
        (" ( 25 - 5 ) *\t4 ", 80),
        ("((((7))))", 7),
        ("007", 7),
        ("5/(3-3)", None),  # well-formed, no value
    ],
)
def test_parser_evaluates_exactly_with_precedence(text, value):
    assert evaluate(parse(text)) == value


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "2**10",
        "x",
        "abs(3)",
        "(2+3",
        "2+3)",
        ")(",
        "()",
        "",
        " ",
        "-3",
        "2+",
        "2 3",
        "2.5",
        "1e3",
        "3//2",
        "2^3",
        "３+1",  # a full-width digit
        "(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1),
        "(" * 100_000,  # no RecursionError
    ],
)
def test_parser_rejects_everything_else(text):
    with pytest.raises(ValueError):
        parse(text)
    assert check(text, NUMBERS, TARGET) is None


def test_nesting_up_to_the_limit_is_fine():
    assert evaluate(parse("(" * MAX_NESTING + "1" + ")" * MAX_NESTING)) == 1


@pytest.mark.parametrize(
    "text, result",
    [
        ("(25-5)*4", True),
        ("4*(25-5)", True),
        (" (25 - 5) * 4 ", True),
        ("(25-05)*4", True),  # a leading zero is the same number
        ("25*4-5", False),  # wrong value
        ("(25-5)*3", False),  # 3 is not in the puzzle
        ("(25-5)*4*1", False),  # nor is 1
        ("(25-5)*4+4-4", False),  # 4 used three times
        ("(25-5)*(4/4)*4", False),
        ("25-5", False),  # every number must be used
        ("(25-5)*4/0", False),  # 0 is not in the puzzle
        ("9" * 5000, False),  # a huge literal is just a number not in the puzzle
        ("(25-5)*4)", None),
    ],
)
def test_check_uses_each_number_exactly_once(text, result):
    assert check(text, NUMBERS, TARGET) is result


def test_a_known_instance_plays_out():
    env = CountdownEnv(format_reward=0.1)
    env.reset(seed=0)
    env.unwrapped.numbers, env.unwrapped.target = NUMBERS, TARGET
    for action, reward, invalid in [("(25-5)*4", 1.0, False), ("25*4-5", 0.1, False),
                                    ("25*4-", 0.0, True)]:
        obs, r, terminated, truncated, info = env.clone().step(action)
        assert (r, terminated, truncated, info["invalid_action"]) == (reward, True, False, invalid)
        assert info["success"] == (reward == 1.0) and info["value"] == reward
        assert obs == "25 5 4=80:"


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_generated_puzzles_are_always_solvable(count):
    env = CountdownEnv(count=count)
    for seed in range(300):
        obs, info = env.reset(seed=seed)
        numbers, target = env.unwrapped.numbers, env.unwrapped.target
        assert obs == " ".join(map(str, numbers)) + f"={target}:" and info["value"] == 1.0
        assert len(numbers) == count and all(1 <= n <= 99 for n in numbers) and 1 <= target <= 100
        solution = env.expert_action(np.random.default_rng(0))
        assert env.action_space.contains(solution)
        assert sorted(int(t) for t in parse(solution) if t.isdigit()) == sorted(numbers)
        _, reward, terminated, _, info = env.step(solution)
        assert (reward, terminated, info["success"]) == (1.0, True, True)
        if count <= 3:  # an independent search agrees that the target is reachable
            assert target in reachable_values(tuple(map(Fraction, numbers)))


def test_generation_varies_and_is_deterministic_under_seed():
    def puzzles(seed):
        env = CountdownEnv(count=4)
        return [env.reset(seed=seed)[0]] + [env.reset()[0] for _ in range(30)]

    assert puzzles(7) == puzzles(7)
    assert puzzles(7) != puzzles(8)
    assert len(set(puzzles(7))) == 31
    # Every operator shows up in the stored solutions.
    env = CountdownEnv(count=4)
    env.reset(seed=0)
    used = set()
    for _ in range(200):
        env.reset()
        used |= set(env.expert_action(None))
    assert set("+-*/()") <= used


def test_legal_actions_are_well_formed_and_mostly_wrong():
    env = CountdownEnv(count=4)
    env.reset(seed=0)
    wrong = 0
    for _ in range(50):
        env.reset()
        actions = env.legal_actions()
        assert actions[0] == env.expert_action(None) and len(actions) == 1 + 3 * 3
        results = [check(a, env.unwrapped.numbers, env.unwrapped.target) for a in actions]
        assert results[0] is True and None not in results
        assert all(env.action_space.contains(a) for a in actions)
        wrong += results.count(False)
    assert wrong > 0.8 * 50 * 9


@settings(max_examples=300, deadline=None)
@given(st.text() | st.text(alphabet="0123456789+-*/() "))
def test_any_string_action_is_handled(action):
    env = CountdownEnv(format_reward=0.25)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and terminated and not truncated
    try:
        parse(action)
        malformed = False
    except ValueError:
        malformed = True
    assert info["invalid_action"] == malformed
    assert reward == (0.0 if malformed else 1.0 if info["success"] else 0.25)


def test_non_string_action_is_a_type_error():
    env = CountdownEnv()
    env.reset(seed=0)
    with pytest.raises(TypeError):
        env.step(80)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(count=1), r"count=1.*\[2, 6\]"),
        (dict(count=7), r"count=7"),
        (dict(max_number=0), r"max_number=0.*>= 1"),
        (dict(max_target=0), r"max_target=0.*>= 1"),
        (dict(format_reward=1.5), r"format_reward=1.5.*\[0, 1\]"),
        (dict(format_reward=float("nan")), r"format_reward=nan"),
    ],
)
def test_bad_arguments_raise(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        CountdownEnv(**kwargs)
