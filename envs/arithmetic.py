"""Multi-digit arithmetic as text, worked with a step-by-step scratchpad."""

from __future__ import annotations

import string
from dataclasses import dataclass

from envs.base import TextEnv, text_space

OPS = {"add": "+", "sub": "-", "mul": "*"}
MODES = ("single", "multi")
MAX_DIGITS = 18  # operands stay within numpy's int64 sampling
STEP_PROMPT, ANSWER_PROMPT = ":", "="
DIGITS = frozenset(string.digits)


@dataclass(frozen=True)
class Problem:
    """`a op b` (op "add", "sub" or "mul"; "sub" needs a >= b), with its worked scratchpad."""

    a: int
    b: int
    op: str

    def __post_init__(self):
        if self.op not in OPS or min(self.a, self.b) < 0 or (self.op == "sub" and self.a < self.b):
            raise ValueError(f"{self!r} is not a problem: op in {tuple(OPS)}, 0 <= b <= a for sub")

    @property
    def text(self) -> str:
        return f"{self.a}{OPS[self.op]}{self.b}"

    @property
    def answer(self) -> str:
        a, b = self.a, self.b
        return str({"add": a + b, "sub": a - b, "mul": a * b}[self.op])

    @property
    def steps(self) -> tuple[str, ...]:
        """The scratchpad steps, right to left (see `ArithmeticEnv` for their format)."""
        width = max(len(str(self.a)), len(str(self.b)))
        a_digits, b_digits = ([int(d) for d in str(n).zfill(width)[::-1]] for n in (self.a, self.b))
        if self.op == "mul":
            return tuple(str(self.a * d) for d in b_digits[: len(str(self.b))])
        sign = 1 if self.op == "add" else -1
        steps, carry = [], 0
        for x, y in zip(a_digits, b_digits):
            carry, digit = divmod(x + sign * (y + carry), 10)
            carry = abs(carry)  # a carry out of addition, or a borrow out of subtraction
            steps.append(f"{carry}{digit}")
        return tuple(steps)

    @property
    def solution(self) -> str:
        """The right single-mode action."""
        return action_text(self.steps, self.answer)


def action_text(steps, answer: str) -> str:
    """A single-mode action: the steps separated by spaces, then "=" and the answer."""
    return " ".join(steps) + "=" + answer


def _is_number(text: str) -> bool:
    return text != "" and set(text) <= DIGITS


def grade(problem: Problem, action: str, grade_steps: bool = False) -> bool | None:
    """Whether the single-mode `action` earns the reward; None if it is not well-formed."""
    body, equals, answer = action.strip().partition("=")
    steps = body.split(" ")
    if not (equals and len(steps) == len(problem.steps) and all(map(_is_number, [*steps, answer]))):
        return None
    return answer == problem.answer and (not grade_steps or tuple(steps) == problem.steps)


def _fits(part: str, want: str | None, complete: bool) -> bool:
    """Whether `part` is `want` (any number if None), or can still grow into it if not
    `complete`."""
    if want is None:
        return set(part) <= DIGITS and (part != "" or not complete)
    return part == want or (not complete and want.startswith(part))


def can_still_succeed(problem: Problem, prefix_text: str, grade_steps: bool = False) -> bool:
    """Whether some continuation of `prefix_text`, the start of a single-mode action, earns the
    reward (as `grade` decides it): False once a wrong answer digit is written, the format is
    broken, or, with `grade_steps`, a wrong scratchpad step is written."""
    body, equals, answer = prefix_text.lstrip().partition("=")
    parts = body.split(" ")
    n = len(problem.steps)
    if len(parts) > n or (equals and len(parts) < n):
        return False
    for i, (part, want) in enumerate(zip(parts, problem.steps)):
        complete = bool(equals) or i < len(parts) - 1
        if not _fits(part, want if grade_steps else None, complete):
            return False
    stripped = answer.rstrip()  # trailing whitespace completes the answer (actions are stripped)
    return not equals or _fits(stripped, problem.answer, complete=stripped != answer)


def _off_by_one(item: str) -> list[str]:
    """`item` with its last digit one higher and one lower (mod 10): well-formed and wrong."""
    return [item[:-1] + str((int(item[-1]) + delta) % 10) for delta in (1, -1)]


class ArithmeticEnv(TextEnv):
    """
    ## Description
    Add, subtract or multiply two random `digits`-digit numbers, writing a scratchpad of
    intermediate results before the answer. Only the answer earns the reward, unless
    `grade_steps` (then every scratchpad step must be right too). The scratchpad has one
    step per digit position, right to left (so `digits` steps):
    - add: the column total, as two digits: the carry out, then the result digit. 47+85 has
      steps "12" (7+5) and "13" (4+8+1), answer "132".
    - sub (always a >= b, so the answer is never negative): the borrow out, then the result
      digit. 85-47 has steps "18" (15-7, borrowing 1) and "03" (8-4-1), answer "38".
    - mul: the partial product of the first operand with the digit, without shifting.
      47*85 has steps "235" (47*5) and "376" (47*8), answer "3995" (235 + 3760).

    ## Action Space
    Text; surrounding whitespace is ignored.
    - `mode="single"`: one action with the whole scratchpad: the steps separated by single
      spaces, then "=" and the answer, e.g. "12 13=132" for 47+85. Declared as
      `Text(charset=digits + " =")` with `max_length` the longest such action for `op` and
      `digits` (9 for 2-digit addition).
    - `mode="multi"`: one step per turn ("12", then "13"), then the answer ("132").
      Declared as `Text(charset=digits)` with `max_length` the longest step or answer.
    A number is any non-empty run of ASCII digits; a number written differently from the
    canonical one ("7" for the step "07", "0132" for "132") is wrong, not invalid. Any other
    string (a wrong number of steps, other characters, an empty step) is invalid: it never
    raises, it ends the episode with reward 0.

    ## Observation Space
    Text over digits, the operator and ":=". The first observation is the problem and a
    prompt, "47+85:". In multi mode each later one is the prompt for the next turn: ":" for
    a step, "=" for the answer, so a multi episode reads "47+85:12\\n:13\\n=132\\n" (actions
    end at a newline). Once the episode has ended the observation is the problem again.

    ## Starting State
    Two operands drawn uniformly from [10^(digits-1), 10^digits - 1] (1-9 for one digit);
    for subtraction they are ordered so that a >= b.

    ## Rewards
    - Right answer (and, with `grade_steps`, right steps): 1, at the end of the episode.
    - Wrong or invalid: 0. Every other step: 0.

    ## Episode End
    Termination: single mode after the one action; multi mode after the answer (turn
    `digits` + 1), or at an invalid step. There is no truncation.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the action was invalid (always False on reset).
    - "success" (bool): the episode earned the reward (True only on its final step).
    - "reachable" (bool): whether the reward can still be earned from here: the text
      written so far, read as the start of a single-mode action, passes
      `can_still_succeed(problem, text, grade_steps)`. Ground truth for a doomed episode:
      it turns False at the first wrong answer digit, wrong format, or (with `grade_steps`)
      the first wrong step, and stays False. At the end it equals "success".
    - "value" (float): the optimal value of the state, 1.0 if "reachable" else 0.0.
    The problem is `env.unwrapped.problem` (a `Problem`).

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("Arithmetic-v0", op="add", digits=2, mode="single", grade_steps=False)
    ```
    - `op`: "add", "sub" or "mul".
    - `digits`: digits per operand, 1 to 18.
    - `mode`: "single" (the whole scratchpad and answer in one action) or "multi" (one step
      per turn, then the answer).
    - `grade_steps`: if True the reward also needs every scratchpad step right.

    ## Version History
    - v0: Initial version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self, op: str = "add", digits: int = 2, mode: str = "single", grade_steps: bool = False
    ):
        if op not in OPS:
            raise ValueError(f"op={op!r} is not valid; choose one of {tuple(OPS)}")
        if not isinstance(digits, int) or not 1 <= digits <= MAX_DIGITS:
            raise ValueError(
                f"digits={digits!r} is not valid; it must be an int in [1, {MAX_DIGITS}]"
            )
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not valid; choose one of {MODES}")
        self.op, self.digits, self.mode, self.grade_steps = op, digits, mode, bool(grade_steps)
        step_length = digits + 1 if op == "mul" else 2
        answer_length = {"add": digits + 1, "sub": digits, "mul": 2 * digits}[op]
        if mode == "single":
            self.action_space = text_space(
                string.digits + " =", digits * (step_length + 1) + answer_length
            )
        else:
            self.action_space = text_space(string.digits, max(step_length, answer_length))
        self.observation_space = text_space(
            string.digits + OPS[op] + STEP_PROMPT + ANSWER_PROMPT, 2 * digits + 2
        )
        self.problem = Problem(1, 1, op)
        self._written: list[str] = []  # multi mode: the steps written so far

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        low, high = 10 ** (self.digits - 1), 10**self.digits
        a, b = (int(n) for n in self.np_random.integers(low, high, size=2))
        if self.op == "sub":
            a, b = max(a, b), min(a, b)
        self.problem = Problem(a, b, self.op)
        self._written = []
        return self._problem_observation(), self._info(reachable=True)

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        text = action.strip()
        steps_left = len(self.problem.steps) - len(self._written)
        if self.mode == "multi" and steps_left > 0:
            if not _is_number(text):
                info = self._info(False, invalid=True)
                return self._problem_observation(), 0.0, True, False, info
            self._written.append(text)
            prefix = " ".join(self._written) + (" " if steps_left > 1 else "=")
            reachable = can_still_succeed(self.problem, prefix, self.grade_steps)
            obs = STEP_PROMPT if steps_left > 1 else ANSWER_PROMPT
            return obs, 0.0, False, False, self._info(reachable)
        if self.mode == "multi":
            text = action_text(self._written, text)
        right = grade(self.problem, text, self.grade_steps)
        info = self._info(bool(right), invalid=right is None, done=True)
        return self._problem_observation(), float(bool(right)), True, False, info

    def expert_action(self, rng=None) -> str:
        """The right action: the whole solution (single mode) or the next step or answer (multi)."""
        if self.mode == "single":
            return self.problem.solution
        return [*self.problem.steps, self.problem.answer][len(self._written)]

    def legal_actions(self) -> list[str]:
        """The right action, then well-formed wrong ones: each step or the answer off by one in
        its last digit (so with `grade_steps=False` a wrong step can still earn the reward)."""
        if self.mode == "multi":
            right = self.expert_action()
            return [right, *_off_by_one(right)]
        items = [*self.problem.steps, self.problem.answer]
        actions = [self.problem.solution]
        for i, item in enumerate(items):
            for other in _off_by_one(item):
                changed = items[:i] + [other] + items[i + 1 :]
                actions.append(action_text(changed[:-1], changed[-1]))
        return actions

    def _problem_observation(self) -> str:
        return self.problem.text + STEP_PROMPT

    def _info(self, reachable: bool, invalid: bool = False, done: bool = False) -> dict:
        return {
            "invalid_action": invalid,
            "success": done and reachable,
            "reachable": reachable,
            "value": float(reachable),
        }
