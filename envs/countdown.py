"""Countdown as text (the TinyZero task): combine the given numbers into the target."""

from __future__ import annotations

import operator
import re
import string
from collections import Counter
from fractions import Fraction

from envs.base import TextEnv, text_space

OPS = "+-*/"
MIN_COUNT, MAX_COUNT = 2, 6
MAX_NESTING = 50  # deeper parentheses are malformed (keeps the recursive parser's stack small)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_ATOM = 3  # precedence of a number or a bracketed expression
_TOKENS = re.compile(r"[0-9]+|\S")  # ASCII digit runs, or any single other non-space character


class _Parser:
    """Recursive descent over the tokens of an equation, emitting postfix (RPN) tokens.

    expr := term (("+" | "-") term)*   term := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")"
    """

    def __init__(self, text: str):
        self.tokens = _TOKENS.findall(text)
        self.pos = 0
        self.postfix: list[str] = []

    def parse(self) -> tuple[str, ...]:
        self.expr(0)
        if self.pos < len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.pos]!r}")
        return tuple(self.postfix)

    def peek(self) -> str:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ""

    def take(self) -> str:
        token = self.peek()
        self.pos += 1
        return token

    def expr(self, depth: int) -> None:
        self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            self.term(depth)
            self.postfix.append(op)

    def term(self, depth: int) -> None:
        self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            self.factor(depth)
            self.postfix.append(op)

    def factor(self, depth: int) -> None:
        token = self.take()
        if token and token[0] in string.digits:
            self.postfix.append(token)
        elif token == "(":
            if depth == MAX_NESTING:
                raise ValueError(f"more than {MAX_NESTING} nested parentheses")
            self.expr(depth + 1)
            if self.take() != ")":
                raise ValueError("unbalanced parentheses")
        else:
            raise ValueError(f"expected a number or '(', got {token!r}")


def parse(text: str) -> tuple[str, ...]:
    """The equation `text` in postfix tokens; ValueError unless it is well-formed.

    Well-formed: integers (ASCII digits), binary + - * /, parentheses (at most `MAX_NESTING`
    deep) and whitespace, nothing else: no unary minus, no "**", no decimals, no names.
    """
    return _Parser(text).parse()


def evaluate(postfix: tuple[str, ...]) -> Fraction | None:
    """The exact value of a parsed equation; None if it divides by zero."""
    stack: list[Fraction] = []
    for token in postfix:
        if token not in OPS:
            stack.append(Fraction(int(token)))
            continue
        right, left = stack.pop(), stack.pop()
        if token == "/" and right == 0:
            return None
        stack.append(_APPLY[token](left, right))
    return stack[0]


def check(text: str, numbers: tuple[int, ...], target: int) -> bool | None:
    """Whether the equation `text` uses each of `numbers` exactly once and equals `target`;
    None if it is malformed (see `parse`)."""
    try:
        postfix = parse(text)
    except ValueError:
        return None
    # Compare the numbers as text first, so a huge literal is never converted to int.
    used = Counter(token.lstrip("0") or "0" for token in postfix if token not in OPS)
    if used != Counter(str(n) for n in numbers):
        return False
    return evaluate(postfix) == target


def _combine(left: tuple, op: str, right: tuple) -> tuple[Fraction, str, int]:
    """(value, text, precedence) of `left op right`, bracketing an operand only where needed."""
    (x, x_text, x_prec), (y, y_text, y_prec) = left, right
    prec = _PRECEDENCE[op]
    x_text = f"({x_text})" if x_prec < prec else x_text
    y_text = f"({y_text})" if y_prec < prec + (op in "-/") else y_text  # a-(b+c), a/(b*c)
    return _APPLY[op](x, y), f"{x_text}{op}{y_text}", prec


def generate(rng, count: int, max_number: int, max_target: int) -> tuple[tuple[int, ...], int, str]:
    """A random puzzle: (numbers, target, a solution using each number once).

    Draws `count` numbers uniformly from [1, max_number], then merges two random items of the
    pool with a random operator until one is left: the larger item comes first, and "/" is
    only offered when it divides exactly, so every intermediate value is an integer >= 0.
    Repeats until the result is in [1, max_target].
    """
    while True:
        numbers = tuple(int(n) for n in rng.integers(1, max_number + 1, size=count))
        pool = [(Fraction(n), str(n), _ATOM) for n in numbers]
        while len(pool) > 1:
            i, j = sorted(rng.choice(len(pool), size=2, replace=False), reverse=True)
            left, right = sorted([pool.pop(i), pool.pop(j)], key=lambda item: -item[0])
            ops = "+-*/" if right[0] and left[0] % right[0] == 0 else "+-*"
            pool.append(_combine(left, ops[int(rng.integers(len(ops)))], right))
        target, solution, _ = pool[0]
        if 1 <= target <= max_target:
            return numbers, int(target), solution


class CountdownEnv(TextEnv):
    """
    ## Description
    The Countdown numbers game, as in TinyZero: given `count` numbers and a target, write an
    equation with + - * / and parentheses that uses each number exactly once (as TinyZero
    checks it) and equals the target. Arithmetic is exact (rational), so "7/2*2" is 7. One
    turn per episode.

    ## Action Space
    Text: the equation, e.g. "(25-5)*4". Parsed by a whitelist recursive-descent parser
    (never `eval`): integers, binary + - * /, parentheses (at most 50 deep) and whitespace;
    no unary minus. The declared space is `Text(charset="0123456789+-*/()")` with `max_length`
    the longest equation needing no redundant parentheses (15 for 4 two-digit numbers,
    10 for 3), but the env accepts any `str`.
    - Malformed (does not parse: other characters, "2**3", "-3", unbalanced parentheses,
      empty): invalid.
    - Well-formed but wrong (a number missing, not in the puzzle or used twice, a value other
      than the target, a division by zero): wrong, not invalid, like TinyZero's format score.

    ## Observation Space
    Text: the numbers separated by spaces, "=", the target and ":", e.g. "25 5 4=80:".
    It stays the same after the step.

    ## Starting State
    `count` numbers drawn uniformly from [1, max_number] and a target in [1, max_target]
    built from all of them with random operators (see `generate`), so a solution always
    exists; intermediate values of that solution are integers >= 0 and its divisions exact.

    ## Rewards
    - A correct equation: 1
    - A well-formed wrong one: `format_reward` (default 0)
    - Malformed: 0

    ## Episode End
    Termination: after the one action. There is no truncation.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the equation was malformed (always False on reset).
    - "success" (bool): the equation was correct (False on reset).
    - "value" (float): the optimal value, 1.0 on reset (a solution exists), then the reward.
    The puzzle is `env.unwrapped.numbers` and `env.unwrapped.target`.

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("Countdown-v0", count=3, max_number=99, max_target=100, format_reward=0.0)
    ```
    - `count`: how many numbers, 2 to 6 (TinyZero uses 3 and 4).
    - `max_number`: >= 1, the numbers are in [1, max_number].
    - `max_target`: >= 1, the target is in [1, max_target].
    - `format_reward`: in [0, 1], the reward for a well-formed wrong equation.

    ## Version History
    - v0: Initial version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        count: int = 3,
        max_number: int = 99,
        max_target: int = 100,
        format_reward: float = 0.0,
    ):
        if not isinstance(count, int) or not MIN_COUNT <= count <= MAX_COUNT:
            raise ValueError(
                f"count={count!r} is not valid; it must be an int in [{MIN_COUNT}, {MAX_COUNT}]"
            )
        for name, value in (("max_number", max_number), ("max_target", max_target)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid; it must be an int >= 1")
        if not 0.0 <= format_reward <= 1.0:  # also rejects NaN
            raise ValueError(f"format_reward={format_reward!r} is not valid; it must be in [0, 1]")
        self.count, self.max_number, self.max_target = count, max_number, max_target
        self.format_reward = float(format_reward)
        number_length, target_length = len(str(max_number)), len(str(max_target))
        self.action_space = text_space(
            string.digits + OPS + "()", count * number_length + (count - 1) + 2 * (count - 2)
        )
        self.observation_space = text_space(
            string.digits + " =:", count * (number_length + 1) + target_length + 1
        )
        self.numbers, self.target, self._solution = (1,) * count, 1, ""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.numbers, self.target, self._solution = generate(
            self.np_random, self.count, self.max_number, self.max_target
        )
        return self._observation(), {"invalid_action": False, "success": False, "value": 1.0}

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        correct = check(action, self.numbers, self.target)
        reward = 0.0 if correct is None else 1.0 if correct else self.format_reward
        info = {"invalid_action": correct is None, "success": bool(correct), "value": reward}
        return self._observation(), reward, True, False, info

    def expert_action(self, rng=None) -> str:
        """The solution stored when the puzzle was generated."""
        return self._solution

    def legal_actions(self) -> list[str]:
        """The solution, then well-formed variants with one operator swapped for another
        (usually wrong)."""
        s = self._solution
        spots = [i for i, char in enumerate(s) if char in OPS]
        return [s] + [s[:i] + op + s[i + 1 :] for i in spots for op in OPS if op != s[i]]

    def _observation(self) -> str:
        return " ".join(map(str, self.numbers)) + f"={self.target}:"
