"""Independent decisions paid together at the end: a credit-assignment knob in their number."""

from __future__ import annotations

from envs.base import TextEnv, check_positive_int, text_space

ANSWERS = {"a": "1", "b": "0"}  # letter -> the right answer
RIGHT, WRONG, END = "+", "-", "="


class LetterTurns(TextEnv):
    """Turns that each show a random letter, "a" or "b", answered "1" or "0": the mechanics that
    Decisions-v0 and DoomedStep-v0 share (``_letter`` is the letter on show)."""

    legal_actions_complete = True

    metadata = {"render_modes": []}

    _letter = "a"

    def expert_action(self, rng) -> str:
        """The right answer for the letter shown."""
        return ANSWERS[self._letter]

    def legal_actions(self) -> list[str]:
        return ["1", "0"]

    def _draw(self) -> str:
        return "ab"[int(self.np_random.integers(2))]


class DecisionsEnv(LetterTurns):
    """
    ## Description
    An episode is `n` independent decisions. Each turn shows a random letter, "a" or "b", and
    the right answer is "1" for "a" and "0" for "b", a fixed mapping the policy must learn.
    The only reward is paid at the end: the fraction of answers that were right.

    The knob is `n`. Outcome-only REINFORCE credits each answer with the whole episode's
    return, so its gradient for one decision carries the noise of the other n - 1; a critic
    that reads the "+"/"-" feedback knows after each answer how much it was worth, and its
    advantage does not. With `feedback=False` nothing in the transcript says which answers
    were right, except the policy's own knowledge of the mapping, so a critic has no more to
    go on than the outcome.

    ## Action Space
    Text: one character, "1" or "0" (surrounding whitespace is ignored). Any other string is
    invalid: it never raises, it ends the episode with reward 0. The declared space is
    `Text(max_length=1, charset="01")`.

    ## Observation Space
    Text: the first turn shows the letter alone ("a"). With `feedback=True` every later
    observation starts with "+" if the previous answer was right or "-" if it was wrong,
    then the new letter ("+b", "-a"), and the observation after the last answer is the mark
    alone ("+" or "-"); so with n = 3 an episode reads "a1\\n+b1\\n-b0\\n+". With
    `feedback=False` there is no mark: the letters alone, then "=" after the last answer
    ("a1\\nb1\\nb0\\n="). After an invalid action the observation is the one it answered.

    ## Starting State
    The first decision, its letter drawn uniformly from the env's `np_random`, as is each
    later letter.

    ## Rewards
    - The n-th answer: the number of right answers divided by n.
    - Every other answer: 0. Invalid action: 0.

    ## Episode End
    Termination: the n-th answer, or an invalid action. There is no truncation.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the action was invalid (always False on reset).
    - "success" (bool): all n answers were right (True only on the final step).
    - "value" (float): the optimal value of the state, (right answers so far + decisions
      left) / n: 1.0 at the start, 1/n less for each wrong answer; at the end the fraction
      right (0.0 after an invalid action).

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("Decisions-v0", n=8, feedback=True)
    ```
    - `n`: the number of decisions, an int >= 1.
    - `feedback`: whether each answer's correctness is shown, a bool.

    ## Version History
    - v0: Initial version.
    """

    def __init__(self, n: int = 8, feedback: bool = True):
        check_positive_int("n", n)
        if not isinstance(feedback, bool):
            raise ValueError(f"feedback={feedback!r} is not valid; it must be a bool")
        self.n, self.feedback = n, feedback
        self.observation_space = text_space("".join(sorted(RIGHT + WRONG + END + "ab")), max_length=2)
        self.action_space = text_space("01", max_length=1)
        self._turn, self._right, self._letter, self._mark = 0, 0, "a", ""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._turn, self._right, self._letter, self._mark = 0, 0, self._draw(), ""
        return self._letter, self._info()

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        choice = action.strip()
        if choice not in ("0", "1"):
            return self._observation(), 0.0, True, False, self._info(invalid=True)
        right = choice == ANSWERS[self._letter]
        self._turn += 1
        self._right += right
        self._mark = (RIGHT if right else WRONG) if self.feedback else ""
        done = self._turn == self.n
        if not done:
            self._letter = self._draw()
        reward = self._right / self.n if done else 0.0
        return self._observation(), reward, done, False, self._info()

    def _observation(self) -> str:
        if self._turn == self.n:
            return self._mark or END
        return self._mark + self._letter

    def _info(self, invalid: bool = False) -> dict:
        done = self._turn == self.n
        return {
            "invalid_action": invalid,
            "success": done and self._right == self.n,
            "value": 0.0 if invalid else (self._right + self.n - self._turn) / self.n,
        }
