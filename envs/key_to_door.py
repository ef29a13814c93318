"""Key-to-door as text: a credit-assignment probe with a delay between a choice and its reward."""

from __future__ import annotations

import math

from envs.base import TextEnv, text_space

KEY_OBS, DISTRACTOR_OBS, DOOR_OBS = "key?", ".", "door"
TAKE, LEAVE = "1", "0"


class KeyToDoorEnv(TextEnv):
    """
    ## Description
    After TVT's key-to-door and bsuite's umbrella: the first turn offers a key, then come
    `delay` distractor turns whose actions do not matter, then a door that pays 1 only if the
    key was taken. The only decision that counts is the first one, and its reward arrives
    `delay` + 1 turns later, optionally behind noisy distractor rewards. With
    `choices_after_key=False` the turns after the key offer one action, so the key is the only
    choice at all: outcome-only REINFORCE then scores no irrelevant choices with the outcome, and
    at `distractor_reward_std` 0 a value function has no credit to assign (the crossover study's
    control).

    ## Action Space
    Text: one character, "1" or "0" (surrounding whitespace is ignored). On the key turn "1"
    takes the key and "0" leaves it; on distractor turns and at the door either is accepted
    and neither matters (only "0" with `choices_after_key=False`). Any other string is
    invalid: it never raises, it ends the episode with reward 0. The declared space is
    `Text(max_length=1, charset="01")`.

    ## Observation Space
    Text: "key?" on the key turn, "." on each distractor turn, "door" at the door, so an
    episode reads "key?1\\n.0\\n.1\\ndoor1\\n" with delay 2 (actions end at a newline). Once
    the episode has ended the observation is the one its last action answered.

    ## Starting State
    The key turn, without the key.

    ## Rewards
    - Door: 1 if the key was taken, else 0.
    - Each distractor turn: a draw from N(0, distractor_reward_std^2) (0 by default), from
      the env's `np_random`, independent of the actions (the key included).
    - Key turn: 0. Invalid action: 0.

    ## Episode End
    Termination: the action at the door (turn `delay` + 2), or an invalid action. There is
    no truncation.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the action was invalid (always False on reset).
    - "success" (bool): the door was reached with the key (True only on the final step).
    - "value" (float): the optimal value of the state, without the mean-zero distractor
      rewards: 1.0 before the key turn (taking the key earns 1) and while the key is held,
      0.0 without it; at the end the door's reward (0.0 after an invalid action).

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("KeyToDoor-v0", delay=16, distractor_reward_std=0.0, choices_after_key=True)
    ```
    - `delay`: the number of distractor turns, an int >= 0.
    - `distractor_reward_std`: the standard deviation of each distractor reward, >= 0.
    - `choices_after_key`: whether the distractor turns and the door accept "1" as well as "0".

    ## Version History
    - v0: Initial version.
    """

    legal_actions_complete = True

    metadata = {"render_modes": []}

    def __init__(self, delay: int = 16, distractor_reward_std: float = 0.0, choices_after_key: bool = True):
        if not isinstance(delay, int) or delay < 0:
            raise ValueError(f"delay={delay!r} is not valid; it must be an int >= 0")
        if not 0.0 <= distractor_reward_std < math.inf:  # also rejects NaN
            raise ValueError(
                f"distractor_reward_std={distractor_reward_std!r} is not valid;"
                " it must be finite and >= 0"
            )
        if not isinstance(choices_after_key, bool):
            raise ValueError(f"choices_after_key={choices_after_key!r} is not valid; it must be True or False")
        self.delay = delay
        self.choices_after_key = choices_after_key
        self.distractor_reward_std = float(distractor_reward_std)
        charset = "".join(sorted(set(KEY_OBS + DISTRACTOR_OBS + DOOR_OBS)))
        self.observation_space = text_space(charset, max_length=len(DOOR_OBS))
        self.action_space = text_space(TAKE + LEAVE, max_length=1)
        self._turn, self._has_key = 0, False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._turn, self._has_key = 0, False
        return KEY_OBS, self._info()

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        choice = action.strip()
        if choice not in self.legal_actions():
            return self._observation(), 0.0, True, False, self._info(invalid=True)
        if self._turn == 0:
            self._has_key = choice == TAKE
            reward = 0.0
        elif self._turn <= self.delay:
            reward = float(self.np_random.normal(0.0, self.distractor_reward_std))
        else:
            reward = float(self._has_key)
        self._turn += 1
        return self._observation(), reward, self._turn > self.delay + 1, False, self._info()

    def expert_action(self, rng) -> str:
        """Take the key; a uniformly random legal action on every other turn."""
        legal = self.legal_actions()
        return TAKE if self._turn == 0 else legal[int(rng.integers(len(legal)))]

    def legal_actions(self) -> list[str]:
        return [TAKE, LEAVE] if self._turn == 0 or self.choices_after_key else [LEAVE]

    def _observation(self) -> str:
        if self._turn == 0:
            return KEY_OBS
        return DISTRACTOR_OBS if self._turn <= self.delay else DOOR_OBS

    def _info(self, invalid: bool = False) -> dict:
        done = self._turn > self.delay + 1
        return {
            "invalid_action": invalid,
            "success": done and self._has_key,
            "value": 0.0 if invalid else float(self._turn == 0 or self._has_key),
        }
