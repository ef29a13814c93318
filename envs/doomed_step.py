"""Lose a piece and you know: one wrong step dooms the episode, which still plays out."""

from __future__ import annotations

from envs.base import check_positive_int, text_space
from envs.decisions import ANSWERS, LetterTurns

ALIVE, DOOMED = "o", "x"


class DoomedStepEnv(LetterTurns):
    """
    ## Description
    An episode of exactly `length` turns. Each turn shows a random letter, "a" or "b", and
    the right answer is "1" for "a" and "0" for "b". One wrong answer dooms the episode: the
    observations say so from then on, the episode still goes on to its full length (later
    answers no longer matter), and the last step pays 1 only if no answer was wrong.

    The knob is L = `length`. Outcome-only REINFORCE learns of a mistake only at the end, and
    blames it on all L answers; a critic that reads the "x" knows at once which answer lost
    the episode. `ChessEndgame-v0` KQK with a hung queen is its real-world instance: the game
    is lost the moment the queen hangs, however long it goes on.

    ## Action Space
    Text: one character, "1" or "0" (surrounding whitespace is ignored). Any other string is
    invalid: it never raises, it ends the episode with reward 0. The declared space is
    `Text(max_length=1, charset="01")`.

    ## Observation Space
    Text: a status mark, "o" while no answer has been wrong or "x" once one has, then the
    turn's letter ("ob", "xa"); after the last answer the mark alone. So with length 3 an
    episode wrong on its first turn reads "oa0\\nxb0\\nxa1\\nx". After an invalid action the
    observation is the one it answered.

    ## Starting State
    The first turn, not doomed, its letter drawn uniformly from the env's `np_random`, as is
    each later letter.

    ## Rewards
    - The last answer: 1 if no answer was wrong, else 0.
    - Every other answer: 0. Invalid action: 0.

    ## Episode End
    Termination: the answer on turn `length`, or an invalid action. There is no truncation.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the action was invalid (always False on reset).
    - "success" (bool): no answer was wrong (True only on the final step).
    - "value" (float): the optimal value of the state: 1.0 while not doomed, 0.0 once doomed;
      at the end the reward (0.0 after an invalid action).

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("DoomedStep-v0", length=8)
    ```
    - `length`: the number of turns L, an int >= 1.

    ## Version History
    - v0: Initial version.
    """

    def __init__(self, length: int = 8):
        check_positive_int("length", length)
        self.length = length
        self.observation_space = text_space("".join(sorted(ALIVE + DOOMED + "ab")), max_length=2)
        self.action_space = text_space("01", max_length=1)
        self._turn, self._doomed, self._letter = 0, False, "a"

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._turn, self._doomed, self._letter = 0, False, self._draw()
        return self._observation(), self._info()

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        choice = action.strip()
        if choice not in ("0", "1"):
            return self._observation(), 0.0, True, False, self._info(invalid=True)
        self._doomed |= choice != ANSWERS[self._letter]
        self._turn += 1
        done = self._turn == self.length
        if not done:
            self._letter = self._draw()
        reward = float(not self._doomed) if done else 0.0
        return self._observation(), reward, done, False, self._info()

    def _observation(self) -> str:
        mark = DOOMED if self._doomed else ALIVE
        return mark if self._turn == self.length else mark + self._letter

    def _info(self, invalid: bool = False) -> dict:
        done = self._turn == self.length
        return {
            "invalid_action": invalid,
            "success": done and not self._doomed,
            "value": 0.0 if invalid else float(not self._doomed),
        }
