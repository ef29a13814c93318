"""Tic-tac-toe as text, against a built-in opponent, with an exact minimax solver."""

from __future__ import annotations

import string
from functools import lru_cache

from envs.base import TextEnv, check_choice, check_penalty, text_space

AGENT, OPPONENT = "X", "O"
EMPTY_BOARD = "123456789"  # cells 1-9, row by row; a free cell shows its own number
OPPONENTS = ("random", "minimax", "epsilon")
FIRST_PLAYERS = ("agent", "opponent", "random")

_LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
_CELL_OF = {str(cell): cell for cell in range(1, 10)}


@lru_cache(maxsize=None)
def legal_moves(board: str) -> tuple[int, ...]:
    """The free cells (1-9) of `board`, a 9-char string such as "X2O456789"."""
    return tuple(i + 1 for i, c in enumerate(board) if c not in "XO")


@lru_cache(maxsize=None)
def outcome(board: str) -> int | None:
    """+1 if X has three in a row, -1 if O has, 0 if the board is full, None if play goes on."""
    for a, b, c in _LINES:
        if board[a] == board[b] == board[c]:  # free cells hold distinct digits, never equal
            return 1 if board[a] == AGENT else -1
    return None if legal_moves(board) else 0


def place(board: str, cell: int, mark: str) -> str:
    """`board` with `mark` written into `cell` (1-9)."""
    return board[: cell - 1] + mark + board[cell:]


@lru_cache(maxsize=None)
def solve(board: str, player: str = AGENT) -> tuple[int, tuple[int, ...]]:
    """Game-theoretic value of `board` for `player` ("X" or "O") to move, and its optimal moves.

    The value is +1 (forced win), 0 (draw with best play) or -1 (forced loss). On a finished
    board it is the result from `player`'s point of view, and there are no moves.
    """
    result = outcome(board)
    if result is not None:
        return (result if player == AGENT else -result), ()
    other = OPPONENT if player == AGENT else AGENT
    best, best_moves = -2, []
    for cell in legal_moves(board):
        value = -solve(place(board, cell, player), other)[0]
        if value > best:
            best, best_moves = value, [cell]
        elif value == best:
            best_moves.append(cell)
    return best, tuple(best_moves)


class TicTacToeEnv(TextEnv):
    """
    ## Description
    Tic-tac-toe on a 3x3 board. The agent plays X against a built-in opponent playing O, which
    is uniformly random, perfect (minimax), or perfect with occasional random moves. The first
    to get three marks in a row, column or diagonal wins; a full board without one is a draw.

    ## Action Space
    Text: the cell to mark. After `str.strip()` it must be exactly one digit 1-9 naming a free
    cell. Any other string (empty, "10", "a", a taken cell, ...) is an invalid move: it never
    raises, it ends the episode with a penalty. The declared space is
    `Text(max_length=1, charset=string.digits)` (a valid move is one digit, so the trainer's
    default action budget is one token), but the env accepts any `str`.

    ## Observation Space
    Text: the board as 3 lines of 3 characters, each ending with "\\n" (12 characters). A free
    cell shows its number, a taken one X (agent) or O (opponent). The empty board is
    "123\\n456\\n789\\n". The board after a step includes the opponent's reply, so the agent is
    always to move, unless the episode has ended (then it is the final board).

    ## Starting State
    The empty board, or with `first_player="opponent"` (or "random" and the coin says so) a
    board with the opponent's first O already placed.

    ## Rewards
    - Win: +1
    - Draw: 0
    - Loss: -1
    - Invalid move: -invalid_penalty (default -2: an illegal move forfeits the game and costs
      more than a loss, so playing on is always better than breaking the rules)
    - Any other step: 0

    ## Episode End
    Termination: a win, a loss, a draw, or an invalid move. There is no truncation; an
    episode has at most 5 agent moves.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the action was invalid (always False on reset).
    - "success" (bool): the agent won (True only on the final step of a won game).
    - "value" (float): the game-theoretic value of the state for the agent to move (+1/0/-1),
      or the actual result once the episode has ended (-1 after an invalid move).
    - "legal_moves" (tuple[int, ...]): the free cells; empty once the episode has ended.

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("TicTacToe-v0", opponent="random", epsilon=0.2, first_player="agent",
             invalid_penalty=2.0, render_mode=None)
    ```
    - `opponent`: "random" (uniform over free cells), "minimax" (uniform over optimal moves;
      never loses) or "epsilon" (a uniform random move with probability `epsilon`, else minimax).
    - `epsilon`: in [0, 1]; used only by `opponent="epsilon"`.
    - `first_player`: "agent", "opponent" (moves inside `reset`) or "random" (a fair coin
      each episode).
    - `invalid_penalty`: >= 0, the reward for an invalid move is its negative.
    - `render_mode`: None or "ansi" (`render()` returns the observation text).

    ## Version History
    - v0: Initial version.
    """

    legal_actions_complete = True

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        opponent: str = "random",
        epsilon: float = 0.2,
        first_player: str = "agent",
        invalid_penalty: float = 2.0,
        render_mode: str | None = None,
    ):
        check_choice("opponent", opponent, OPPONENTS)
        if not 0.0 <= epsilon <= 1.0:  # also rejects NaN
            raise ValueError(f"epsilon={epsilon!r} is not valid; it must be in [0, 1]")
        check_choice("first_player", first_player, FIRST_PLAYERS)
        check_penalty("invalid_penalty", invalid_penalty)
        check_choice("render_mode", render_mode, (None, *self.metadata["render_modes"]))
        self.opponent = opponent
        self.epsilon = epsilon
        self.first_player = first_player
        self.invalid_penalty = float(invalid_penalty)
        self.render_mode = render_mode
        self.observation_space = text_space("123456789XO\n", max_length=12, min_length=12)
        self.action_space = text_space(string.digits, max_length=1)
        self._board = EMPTY_BOARD

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._board = EMPTY_BOARD
        if self.first_player == "opponent" or (
            self.first_player == "random" and self.np_random.random() < 0.5
        ):
            self._board = place(self._board, self._opponent_move(), OPPONENT)
        return self._observation(), self._info(solve(self._board, AGENT)[0])

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        cell = _CELL_OF.get(action.strip())
        if cell not in legal_moves(self._board):  # also catches cell None
            reward = -self.invalid_penalty
            return self._observation(), reward, True, False, self._info(-1, invalid=True)

        self._board = place(self._board, cell, AGENT)
        if outcome(self._board) is None:
            self._board = place(self._board, self._opponent_move(), OPPONENT)
        result = outcome(self._board)
        if result is None:
            return self._observation(), 0.0, False, False, self._info(solve(self._board)[0])
        return self._observation(), float(result), True, False, self._info(result, done=True)

    def expert_action(self, rng) -> str:
        """A uniformly chosen optimal move (minimax) for the agent."""
        moves = solve(self._board, AGENT)[1]
        return str(moves[int(rng.integers(len(moves)))])

    def legal_actions(self) -> list[str]:
        return [str(cell) for cell in legal_moves(self._board)]

    def render(self) -> str | None:
        return self._observation() if self.render_mode == "ansi" else None

    def _opponent_move(self) -> int:
        rng = self.np_random
        if self.opponent == "random" or (
            self.opponent == "epsilon" and rng.random() < self.epsilon
        ):
            moves = legal_moves(self._board)
        else:
            moves = solve(self._board, OPPONENT)[1]
        return moves[int(rng.random() * len(moves))]  # uniform; ~2x cheaper than rng.integers

    def _observation(self) -> str:
        b = self._board
        return f"{b[0:3]}\n{b[3:6]}\n{b[6:9]}\n"

    def _info(self, value: int, invalid: bool = False, done: bool = False) -> dict:
        return {
            "invalid_action": invalid,
            "success": done and value == 1,
            "value": float(value),
            "legal_moves": () if invalid or done else legal_moves(self._board),
        }
