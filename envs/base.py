"""Conventions shared by the text environments in this package.

Every env here is a `gymnasium.Env` whose observations and actions are plain strings
(`gymnasium.spaces.Text`). The policy reads the observation text and writes the action text.

`info` keys, the contract the trainer relies on:

- ``invalid_action`` (bool), on every step: the action could not be understood or was not
  legal. Garbage actions never raise; they are an invalid move with a documented penalty.
- ``success`` (bool), on the final step of an episode: the task was solved (a win, a right
  answer). Envs may also report it, as False, on earlier steps.
- ``value`` (float), optional: the exact value of the current state, where the env can
  compute it; ground truth for value-function diagnostics.

Terminated vs truncated (DESIGN.md, "The token-level MDP"): the trainer bootstraps the value
of the last state only when an episode is *truncated*; a *terminated* episode's return ends
there. So an episode limit that the observation shows (a "moves left" countdown, "step 3 of
5") is part of the task: the env must return ``terminated=True, truncated=False`` when it is
reached (report it in ``info`` if useful, as the chess envs' ``move_limit``), and the policy
can plan for it. A limit the agent cannot see (Gymnasium's ``TimeLimit``, the trainer's own
cap) is not part of the task and truncates, and V is bootstrapped there. In your own env:
either show the limit and terminate, or hide it and truncate, never show it and truncate
(the value target would then bootstrap past a deadline the policy is told about).

Demonstrations (for warm-starting a policy, `rl_vf pretrain`): an env that can play well
implements `expert_action()` and `legal_actions()`; `demo_action()` mixes the two.
"""

from __future__ import annotations

import copy
import math
from typing import Self

import gymnasium
import numpy as np
from gymnasium.spaces import Text
from gymnasium.utils import seeding


def check_choice(name: str, value, choices: tuple) -> None:
    """Constructor argument check: `value` must be one of `choices` (named in the error)."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {choices}")


def check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid; it must be an int >= 1")


def check_penalty(name: str, value) -> None:
    """A non-negative finite number (penalties, reward coefficients)."""
    if not 0.0 <= value < math.inf:  # also rejects NaN
        raise ValueError(f"{name}={value!r} is not valid; it must be finite and >= 0")


def text_space(charset: str, max_length: int, min_length: int = 1) -> Text:
    """A `Text` space with an explicit charset.

    Gymnasium's default charset is alphanumeric only, so an env emitting newlines or
    punctuation would fail its own `observation_space.contains` check; always name it.
    """
    return Text(max_length, min_length=min_length, charset=charset)


class TextEnv(gymnasium.Env[str, str]):
    """A `gymnasium.Env` with string observations and actions (see the module docstring)."""

    # True where `legal_actions()` lists every legal action (games); then a policy may be
    # restricted to them (`constrain_actions: legal`). Tasks with free-form answers list only a
    # few plausible ones, for demonstrations.
    legal_actions_complete = False

    # Attributes that are configuration, not state (a dataset with its word lists): clones share them.
    clone_shares: tuple[str, ...] = ()

    def clone(self, seed: int | None = None) -> Self:
        """An independent copy of this env, mid-episode state included.

        Without `seed` the copy also shares the random state, so the same actions give the
        same continuation. With `seed` its `np_random` is re-seeded, so Monte-Carlo
        continuations branching from one state differ.
        """
        # Spaces and spec are configuration: shared, not copied (a deep copy of them cost ~9x the
        # state of a KeyToDoor env); so is the random state that a new seed replaces anyway.
        shared = [self.observation_space, self.action_space, self.spec]
        shared += [getattr(self, name) for name in self.clone_shares]
        shared += [self._np_random] if seed is not None else []
        twin = copy.deepcopy(self, {id(x): x for x in shared})
        if seed is not None:
            twin._np_random, twin._np_random_seed = seeding.np_random(seed)
        return twin

    def expert_action(self, rng: np.random.Generator) -> str:
        """A good action for the current state (the env's solver, heuristic or engine).

        `rng` breaks ties, so demonstrations vary without touching the env's own random state.
        """
        raise NotImplementedError(f"{type(self).__name__} has no demonstrator")

    def legal_actions(self) -> list[str]:
        """Legal actions in the current state, as the exact text the env accepts: all of them
        where `legal_actions_complete`, else the right one and some plausible wrong ones."""
        raise NotImplementedError(f"{type(self).__name__} does not list its legal actions")

    def demo_action(self, rng: np.random.Generator, expert_prob: float) -> str:
        """The expert's action with probability `expert_prob`, else a uniformly random legal one.

        Mixing in random legal moves keeps a warm-started policy imperfect, so RL has headroom.
        """
        if rng.random() < expert_prob:
            return self.expert_action(rng)
        legal = self.legal_actions()
        return legal[int(rng.integers(len(legal)))]
