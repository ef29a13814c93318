"""Questions from the `reasoning-gym` package's procedural datasets, scored by each one's own scorer."""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping

from envs.base import TextEnv, check_choice, check_positive_int, text_space

ANSWER_CHARSET = string.digits + string.ascii_letters + string.punctuation + " "
OBSERVATION_CHARSET = ANSWER_CHARSET + "\n"
SHOWN_AS_IS = frozenset(OBSERVATION_CHARSET)
MAX_OBSERVATION_LENGTH = 65_536  # the longest default questions have ~10,000 characters (codeio)
# Datasets whose scorer (reasoning-gym 0.1.25) runs the answer as Python in this process: `eval`,
# or sympy's `parse_expr`, which calls `eval`. Model-written code belongs in envs.sandbox, so these
# need `allow_unsandboxed=True`.
EVAL_SCORERS = frozenset({
    "binary_matrix", "countdown", "intermediate_integration", "n_queens", "polynomial_multiplication",
    "puzzle24", "simple_integration", "spiral_matrix", "string_insertion",
})
# Left out: "composite" mixes datasets, with a config of Python objects that hides which scorers run.
EXCLUDED = frozenset({"composite"})


def ascii_text(text: str) -> str:
    """`text` over OBSERVATION_CHARSET: any other character written as its Python escape ("→" as
    "\\u2192", a tab as "\\t"), so nothing of the question is lost."""
    return "".join(
        c if c in SHOWN_AS_IS else c.encode("unicode_escape").decode("ascii") for c in text
    )


def make_dataset(name: str, config: Mapping):
    """reasoning-gym's dataset `name` built with `config` (seed 0 unless it gives one), or a
    ValueError that names what is wrong."""
    import reasoning_gym  # ~2 s of imports (sympy, ...): only when such an env is made
    from reasoning_gym.factory import DATASETS

    check_choice("dataset", name, tuple(sorted(DATASETS.keys() - EXCLUDED)))
    keys = tuple(field.name for field in dataclasses.fields(DATASETS[name][1]))
    if not isinstance(config, Mapping):
        raise ValueError(f"config={config!r} is not valid; it must be a mapping of {keys}")
    try:
        dataset = reasoning_gym.create_dataset(name, **{"seed": 0, **config})
    except Exception as error:  # its checks are asserts, and odd values fail in odd ways
        raise ValueError(
            f"config={dict(config)!r} is not valid for dataset {name!r} "
            f"({type(error).__name__}: {error}); its keys: {keys}"
        ) from None
    if len(dataset) < 1:
        raise ValueError(f"config={dict(config)!r} is not valid: dataset {name!r} has no items")
    return dataset


class ReasoningGymEnv(TextEnv):
    """
    ## Description
    One question from a procedural dataset of the `reasoning-gym` package (100+ generators of
    maths, logic, puzzle and string tasks: "chain_sum", "basic_arithmetic", "gcd", "maze", ...),
    answered in one line and scored by the dataset's own scorer. With `max_attempts` > 1 a wrong
    answer is told its score and the agent tries again, up to `max_attempts` times.

    The dataset is built once, from `config` (with seed 0 unless `config` gives one), and holds
    `len(dataset)` items (its `size`, 500 by default); every episode asks one of them.
    Generating and scoring run offline, in this process. The scorers of a few datasets
    (`EVAL_SCORERS`: countdown, puzzle24, the integration and matrix ones, ...) run the answer
    as Python (`eval`, sympy's `parse_expr`), so an answer can run any code there, outside
    `envs.sandbox`: they are refused unless `allow_unsandboxed=True`.

    ## Action Space
    Text: the answer, in the format the question asks for; surrounding whitespace is ignored.
    Declared as `Text(charset=printable ASCII without newline, max_length=max_answer_length)`,
    since rl_vf's actions end at a newline. So datasets whose answers span several lines (sudoku,
    n_queens, ...) or need characters outside that charset (prime_factorization's "×") are out
    of reach of rl_vf's policies. An empty answer, one longer than `max_answer_length`
    characters, or one the dataset's scorer raises on is invalid: it never raises, it ends the
    episode with reward 0.

    ## Observation Space
    Text over printable ASCII and newline, at most 65,536 characters: the question, a newline
    and the prompt "Answer:" ("Attempt 1 of 3. Answer:" with `max_attempts=3`). Characters
    outside that charset ("→", "∧", emoji; a few datasets use them) are written as Python
    escapes ("\\u2192"). After a wrong answer with attempts left: the verdict and the next
    prompt, "Wrong (score 0.00), try again. Attempt 2 of 3. Answer:". Once the episode has
    ended: the verdict, "Right (score 1.00).", "Wrong (score 0.50)." or "Invalid answer.".

    ## Starting State
    A uniformly random item of the dataset, drawn with `np_random` (so a seed fixes it).

    ## Rewards
    On the step that ends the episode: the dataset's score of that answer, 1 for a right one.
    Some scorers give partial credit (the default one gives len(right) / len(answer) to an
    answer that contains the right one; countdown gives 0.05 to any well-formed wrong
    equation). Earlier steps (wrong answers with attempts left) and invalid answers: 0.

    ## Episode End
    Termination: an answer that scores 1; an invalid answer; the `max_attempts`-th answer (the
    limit is shown in every prompt). No truncation.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the answer was invalid (always False on reset).
    - "success" (bool): the answer scored 1 (or more).
    - "score" (float): the dataset's score of the last answer (0.0 on reset and when invalid).
    There is no "value": whether a state can still earn 1 is not known exactly for every
    dataset (some right answers need several lines or characters outside the action space).
    The dataset item (its "question", "answer" and "metadata") is `env.unwrapped.item`.

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("ReasoningGym-v0", dataset="chain_sum", config=None, max_attempts=1,
             max_answer_length=64, allow_unsandboxed=False)
    ```
    - `dataset`: a reasoning-gym dataset name (`reasoning_gym.factory.DATASETS`, but
      "composite").
    - `config`: the dataset's keyword arguments, e.g. {"min_terms": 2, "max_terms": 2} for
      chain_sum; None for its defaults. "seed" (default 0) and "size" choose its items.
    - `max_attempts`: >= 1, answers per episode (1: single-turn).
    - `max_answer_length`: >= 1, the longest answer scored (and the action space's max_length,
      which is also rl_vf's default action budget in tokens).
    - `allow_unsandboxed`: allow the datasets of `EVAL_SCORERS`, whose scorers run the
      (model-written) answer as Python in this process.

    ## Version History
    - v0: Initial version (reasoning-gym 0.1.25).
    """

    metadata = {"render_modes": []}
    clone_shares = ("dataset",)  # ~0.7 s to deep-copy for arc_agi, and the same for every clone

    def __init__(
        self,
        dataset: str = "chain_sum",
        config: Mapping | None = None,
        max_attempts: int = 1,
        max_answer_length: int = 64,
        allow_unsandboxed: bool = False,
    ):
        check_positive_int("max_attempts", max_attempts)
        check_positive_int("max_answer_length", max_answer_length)
        if dataset in EVAL_SCORERS and not allow_unsandboxed:
            raise ValueError(
                f"dataset={dataset!r} scores an answer by running it as Python (eval) in this "
                "process, outside envs.sandbox; pass allow_unsandboxed=True if running "
                "model-written code unconfined is acceptable"
            )
        self.dataset_name = dataset
        self.dataset = make_dataset(dataset, {} if config is None else config)
        self.max_attempts = max_attempts
        self.max_answer_length = max_answer_length
        self.observation_space = text_space(OBSERVATION_CHARSET, MAX_OBSERVATION_LENGTH)
        self.action_space = text_space(ANSWER_CHARSET, max_answer_length)
        self.item: dict = {}
        self._attempts = 0  # answers given this episode

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.item = self.dataset[int(self.np_random.integers(len(self.dataset)))]
        self._attempts = 0
        observation = f"{ascii_text(self.item['question'])}\n{self._prompt()}"
        if len(observation) > MAX_OBSERVATION_LENGTH:
            raise ValueError(
                f"a question of dataset {self.dataset_name!r} has {len(observation)} characters, "
                f"over the observation space's {MAX_OBSERVATION_LENGTH}: choose a smaller config"
            )
        return observation, self._info(0.0)

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        score = self._score(action.strip())
        if score is None:
            return "Invalid answer.", 0.0, True, False, self._info(0.0, invalid=True)
        self._attempts += 1
        if score >= 1.0 or self._attempts == self.max_attempts:
            verdict = "Right" if score >= 1.0 else "Wrong"
            return f"{verdict} (score {score:.2f}).", score, True, False, self._info(score)
        feedback = f"Wrong (score {score:.2f}), try again. {self._prompt()}"
        return feedback, 0.0, False, False, self._info(score)

    def _score(self, answer: str) -> float | None:
        """The dataset's score of `answer`, or None if it is invalid (see the Action Space)."""
        if not answer or len(answer) > self.max_answer_length:  # not worth a scorer's time
            return None
        try:
            return float(self.dataset.score_answer(answer, self.item))
        except Exception:  # a third-party scorer failing on a malformed answer must not end a run
            return None

    def _prompt(self) -> str:
        if self.max_attempts == 1:
            return "Answer:"
        return f"Attempt {self._attempts + 1} of {self.max_attempts}. Answer:"

    def _info(self, score: float, invalid: bool = False) -> dict:
        return {"invalid_action": invalid, "success": score >= 1.0, "score": score}
