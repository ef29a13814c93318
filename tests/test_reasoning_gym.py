import builtins
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers ReasoningGym-v0)
from envs.reasoning_gym_env import EVAL_SCORERS, EXCLUDED, ReasoningGymEnv
from rl_vf.cli import main
from tests.env_checks import check_env_without_warnings

SMALL = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64", "--threads", "1"]
EASY = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}  # chain_sum: "4 - 1 ="


def right_answer(env) -> str:
    return env.unwrapped.item["answer"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(max_attempts=3),
        dict(dataset="basic_arithmetic", config={"max_terms": 3}, max_answer_length=16),
        dict(dataset="propositional_logic"),  # its questions have non-ASCII symbols: ∧ ∨ → ¬
    ],
    ids=str,
)
def test_check_env(kwargs):
    check_env_without_warnings("ReasoningGym-v0", **kwargs)


def test_deterministic_under_seed():
    def questions(seed):
        env = ReasoningGymEnv()
        return [env.reset(seed=seed)[0]] + [env.reset()[0] for _ in range(10)]

    assert questions(7) == questions(7)
    assert questions(7) != questions(8)


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_the_right_answer_scores_one_and_ends_the_episode(max_attempts):
    env = ReasoningGymEnv(max_attempts=max_attempts)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        assert obs.startswith(env.item["question"]) and obs.endswith("Answer:")
        obs, reward, terminated, truncated, info = env.step(f" {right_answer(env)}\n")
        assert (obs, reward, terminated, truncated) == ("Right (score 1.00).", 1.0, True, False)
        assert info == {"invalid_action": False, "success": True, "score": 1.0}


def test_a_wrong_answer_gets_the_verdict_and_another_try():
    env = ReasoningGymEnv(config=EASY, max_attempts=3)
    obs, _ = env.reset(seed=0)
    assert obs.endswith("\nAttempt 1 of 3. Answer:")
    wrong = str(int(right_answer(env)) + 1)
    obs, reward, terminated, _, info = env.step(wrong)
    assert (obs, reward, terminated) == ("Wrong (score 0.00), try again. Attempt 2 of 3. Answer:", 0.0, False)
    assert info == {"invalid_action": False, "success": False, "score": 0.0}
    obs, reward, terminated, _, info = env.step(right_answer(env))
    assert (obs, reward, terminated, info["success"]) == ("Right (score 1.00).", 1.0, True, True)


def test_the_last_wrong_attempt_ends_the_episode_with_its_score():
    env = ReasoningGymEnv(config=EASY, max_attempts=2)
    env.reset(seed=0)
    # The default scorer gives len(right) / len(answer) to an answer containing the right one.
    partly_right = f"{right_answer(env)} ?"
    expected = env.dataset.score_answer(partly_right, env.item)
    assert 0.0 < expected < 1.0
    for attempt, ends in [(1, False), (2, True)]:
        obs, reward, terminated, _, info = env.step(partly_right)
        assert terminated == ends and info["score"] == expected and not info["success"]
    assert (obs, reward) == (f"Wrong (score {expected:.2f}).", expected)


@pytest.mark.parametrize("max_attempts", [1, 3])
@settings(max_examples=200, deadline=None)
@given(action=st.text())
def test_any_string_is_handled(max_attempts, action):
    env = ReasoningGymEnv(max_attempts=max_attempts)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and not truncated and 0.0 <= reward <= 1.0
    assert info["invalid_action"] == (not 1 <= len(action.strip()) <= env.max_answer_length)
    assert terminated == (info["invalid_action"] or info["success"] or max_attempts == 1)


@pytest.mark.parametrize("action", ["", " \n", "7" * 65, "x" * 100_000, "５", "→ ∧", "\x00"])
def test_garbage_actions_never_raise(action):
    env = ReasoningGymEnv(max_attempts=3)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    invalid = not 1 <= len(action.strip()) <= env.max_answer_length
    assert info["invalid_action"] == invalid and env.observation_space.contains(obs)
    if invalid:
        assert (obs, reward, terminated, truncated) == ("Invalid answer.", 0.0, True, False)


def test_non_string_action_is_a_type_error():
    env = ReasoningGymEnv()
    env.reset(seed=0)
    with pytest.raises(TypeError):
        env.step(12)


def test_characters_outside_the_charset_are_escaped():
    env = ReasoningGymEnv(dataset="propositional_logic")
    obs, _ = env.reset(seed=0)
    assert "\u2227" in env.item["question"] and "\\u2227" in obs
    assert env.observation_space.contains(obs)


def test_clone_continues_identically_and_independently():
    env = ReasoningGymEnv(config=EASY, max_attempts=3)
    env.reset(seed=3)
    env.step("wrong")
    clone = env.clone()
    assert clone.dataset is env.dataset  # configuration: shared, not copied
    assert clone.step(right_answer(env))[:3] == ("Right (score 1.00).", 1.0, True)
    # The original is still at its second attempt, and a clone of it goes on the same way.
    twin = env.clone()
    for action, ends in [("wrong", False), ("also wrong", True)]:
        step = env.step(action)
        assert step == twin.step(action) and step[2] == ends


def test_clone_with_seed_reseeds():
    env = ReasoningGymEnv()
    env.reset(seed=3)
    assert env.clone(seed=1).reset()[0] == env.clone(seed=1).reset()[0]
    assert len({env.clone(seed=s).reset()[0] for s in range(10)}) > 1


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(dataset="chain_summ"), r"dataset='chain_summ'.*'basic_arithmetic'.*'chain_sum'"),
        (dict(dataset="composite"), r"dataset='composite' is not valid"),
        (dict(dataset="countdown"), r"dataset='countdown'.*eval.*allow_unsandboxed=True"),
        (dict(config={"min_term": 2}), r"min_term.*for dataset 'chain_sum'.*'min_terms'"),
        (dict(config={"min_terms": 5, "max_terms": 2}), r"max_terms must be >= min_terms"),
        (dict(config="min_terms=2"), r"config='min_terms=2'.*mapping"),
        (dict(dataset="gcd", config={"size": 0}), r"dataset 'gcd' has no items"),
        (dict(max_attempts=0), r"max_attempts=0"),
        (dict(max_answer_length=2.5), r"max_answer_length=2.5"),
    ],
)
def test_bad_arguments_raise(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        ReasoningGymEnv(**kwargs)


def test_eval_scorers_lists_the_scorers_that_run_the_answer_as_python():
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    # A harmless canary: an answer that, if a scorer evaluates it, leaves a mark in builtins.
    canary = "__import__('builtins').__dict__.setdefault('rl_vf_canary', []).append(1) or []"
    evaluated = set()
    for name in sorted(DATASETS.keys() - EXCLUDED):
        dataset = reasoning_gym.create_dataset(name, seed=0, size=1)
        try:
            dataset.score_answer(canary, dataset[0])
        except Exception:  # some scorers raise on it (the env counts that as invalid)
            pass
        if builtins.__dict__.pop("rl_vf_canary", None):
            evaluated.add(name)
    assert evaluated == EVAL_SCORERS


def test_an_eval_scorer_can_be_allowed():
    env = ReasoningGymEnv(dataset="countdown", allow_unsandboxed=True)
    env.reset(seed=0)
    assert env.step(right_answer(env))[1:3] == (1.0, True)


def test_the_tiny_policy_trains_on_it(tmp_path):
    env_kwargs = json.dumps({"dataset": "chain_sum", "config": EASY, "max_attempts": 2})
    args = ["train", "--env", "ReasoningGym-v0", "--env-kwargs", env_kwargs, "--total-episodes", "32",
            "--episodes-per-update", "16", "--max-action-tokens", "4", "--eval-every", "0",
            "--final-eval-episodes", "16", "--out", str(tmp_path / "run"), "--wandb", "disabled", *SMALL]
    assert main(args) == 0
    assert (tmp_path / "run" / "summary.json").exists()
