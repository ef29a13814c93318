"""Chess as text: a full game against Stockfish or a random mover."""

from __future__ import annotations

import math

import chess
import chess.engine

from envs import chess_common as cc
from envs.base import TextEnv

OPPONENTS = ("random", "stockfish")


class ChessEnv(TextEnv):
    """
    ## Description
    A game of chess from the initial position (or `fen`). The agent plays one colour against
    a built-in opponent: uniformly random legal moves, or Stockfish at a chosen Skill Level
    and search limit.

    ## Action Space
    Text: one move, in UCI ("e2e4", "e7e8q", "e1g1") or SAN ("e4", "Nxf7+", "O-O"),
    whichever the env's `move_format`; both are accepted regardless (surrounding whitespace
    is ignored). Any other string (unparseable, illegal, ambiguous, the null move) is an
    invalid move: it never raises, it ends the episode. The declared space is
    `Text(max_length=7)` over the characters of UCI and SAN moves, but the env accepts any
    `str`.

    ## Observation Space
    Text: a header line naming the side to move (the agent's colour), the move format and
    the agent moves left, then the board as python-chess prints it (8 lines of 8
    space-separated squares, White at the bottom; upper case White, lower case Black, "."
    empty), optionally a "FEN: ..." line and a "Legal: ..." line of every legal move in the
    move format. The initial observation (as White, defaults):
    ```
    White to move (uci), moves left: 100
    r n b q k b n r
    p p p p p p p p
    . . . . . . . .
    . . . . . . . .
    . . . . . . . .
    . . . . . . . .
    P P P P P P P P
    R N B Q K B N R
    ```
    After a step the board includes the opponent's reply, so the agent is to move unless the
    episode has ended.

    ## Starting State
    The position of `fen` (default: the initial position). If the agent is not to move
    there, the opponent moves first, inside `reset`.

    ## Rewards
    - Win (the agent checkmates): +1
    - Draw (stalemate, insufficient material, threefold repetition, fifty-move rule): 0
    - Loss (the agent is checkmated): -1
    - Invalid move: -invalid_penalty (default 1: an invalid move forfeits the game)
    - Running out of moves: 0
    - Shaping, on every valid step, added to the above: `material_reward` times the change
      of the agent's material balance (own minus opponent's; pawn 1, knight and bishop 3,
      rook 5, queen 9) over the step, i.e. the agent's move and the opponent's reply.
      Off by default (0.0).

    ## Episode End
    Termination: checkmate, a draw, an invalid move, or the agent has made `max_moves` moves
    without the game ending (`info["move_limit"]`). Threefold repetition and the fifty-move
    rule end the game as soon as they apply (as if claimed). The move limit terminates, it
    does not truncate: the observation counts the moves left, so the limit is part of the
    task and no value is bootstrapped there. The env never truncates; a `TimeLimit` wrapper
    (a limit the agent cannot see) does.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the action was invalid (always False on reset).
    - "success" (bool): the agent has won.
    - "move_limit" (bool): this step ended the episode by using the agent's last move
      (`max_moves`) without the game ending.

    ## Demonstrator
    `expert_action(rng)`: Stockfish's move at full strength (Skill Level 20) under the env's
    search limit, when Stockfish is installed; else a uniformly random legal move (by `rng`).
    `legal_actions()` lists the legal moves in `move_format`.

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("Chess-v0", opponent="random", agent_color="white", skill_level=0, depth=5,
             movetime=None, fen=chess.STARTING_FEN, max_moves=100, move_format="uci",
             show_fen=False, show_legal_moves=False, compact=False, material_reward=0.0, invalid_penalty=1.0,
             stockfish_path=envs.chess_common.STOCKFISH_PATH, render_mode=None)
    ```
    - `opponent`: "random" (uniform legal moves) or "stockfish" (raises FileNotFoundError
      at construction if Stockfish is not installed).
    - `agent_color`: "white", "black" or "random" (a fair coin each episode).
    - `skill_level`: 0-20, Stockfish's "Skill Level" as the opponent. Below 20 Stockfish
      weakens its play with its own time-seeded randomness, so such games are not
      reproducible under `seed`; at 20 with a `depth` limit they are.
    - `depth`, `movetime`: Stockfish's search limit, a depth and/or seconds per move (at
      least one; whichever is reached first); also the demonstrator's.
    - `fen`: the starting position; it must be legal and not over.
    - `max_moves`: agent moves before the episode terminates (shown in the observation as
      the moves left).
    - `move_format`: "uci" or "san", the format of the observation and `legal_actions()`.
    - `show_fen`, `show_legal_moves`: add the FEN line and the legal-move line.
    - `compact`: a short header ("w 30": side to move, moves left) and the diagram without
      spaces, half the characters (for character-level models).
    - `material_reward`: >= 0, the coefficient of the material shaping reward.
    - `invalid_penalty`: >= 0, the reward for an invalid move is its negative.
    - `stockfish_path`: the engine binary (default: `stockfish` on PATH, else Debian's
      /usr/games/stockfish); None disables Stockfish.
    - `render_mode`: None or "ansi" (`render()` returns the observation text).

    The env starts Stockfish only when it first needs it; `close()` stops it.

    ## Version History
    - v0: Initial version. Running out of moves (`max_moves`, shown as the moves left)
      terminates rather than truncates, with `info["move_limit"]` (issue 17); the id is
      unchanged.
    """

    legal_actions_complete = True

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        opponent: str = "random",
        agent_color: str = "white",
        skill_level: int = 0,
        depth: int | None = 5,
        movetime: float | None = None,
        fen: str = chess.STARTING_FEN,
        max_moves: int = 100,
        move_format: str = "uci",
        show_fen: bool = False,
        show_legal_moves: bool = False,
        compact: bool = False,
        material_reward: float = 0.0,
        invalid_penalty: float = 1.0,
        stockfish_path: str | None = cc.STOCKFISH_PATH,
        render_mode: str | None = None,
    ):
        cc.check_choice("opponent", opponent, OPPONENTS)
        cc.check_choice("agent_color", agent_color, cc.AGENT_COLORS)
        cc.check_choice("skill_level", skill_level, tuple(range(21)))
        if depth is not None:
            cc.check_positive_int("depth", depth)
        if movetime is not None and not 0.0 < movetime < math.inf:
            raise ValueError(f"movetime={movetime!r} is not valid; it must be seconds > 0")
        if depth is None and movetime is None:
            raise ValueError("depth=None and movetime=None is not valid; give at least one")
        board = chess.Board(fen)  # raises ValueError for a malformed FEN
        if not board.is_valid() or cc.game_outcome(board) is not None:
            raise ValueError(f"fen={fen!r} is not valid; it must be a legal position, not over")
        cc.check_positive_int("max_moves", max_moves)
        cc.check_choice("move_format", move_format, cc.MOVE_FORMATS)
        cc.check_penalty("material_reward", material_reward)
        cc.check_penalty("invalid_penalty", invalid_penalty)
        cc.check_choice("render_mode", render_mode, (None, *self.metadata["render_modes"]))
        has_stockfish = cc.stockfish_available(stockfish_path)
        if opponent == "stockfish" and not has_stockfish:
            raise FileNotFoundError(
                f"opponent='stockfish' needs the Stockfish binary {stockfish_path!r}, "
                f"which is not installed: {cc.INSTALL_HINT}"
            )
        self.opponent, self.agent_color, self.skill_level = opponent, agent_color, skill_level
        self.fen, self.max_moves, self.move_format = fen, max_moves, move_format
        self.show_fen, self.show_legal_moves = show_fen, show_legal_moves
        self.compact = compact
        self.material_reward = float(material_reward)
        self.invalid_penalty = float(invalid_penalty)
        self.render_mode = render_mode
        limit = chess.engine.Limit(depth=depth, time=movetime)
        self._stockfish = cc.Stockfish(stockfish_path, limit) if has_stockfish else None
        self.observation_space, self.action_space = cc.spaces()
        self._board = board
        self._agent = chess.WHITE
        self._moves = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._board = chess.Board(self.fen)
        self._agent = cc.agent_color(self.agent_color, self.np_random)
        self._moves = 0
        if self._board.turn != self._agent:
            self._board.push(self._opponent_move())
        return self._observation(), self._info()

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        board = self._board
        move = cc.parse_move(board, action)
        if move is None:
            info = self._info(invalid=True)
            return self._observation(), -self.invalid_penalty, True, False, info
        material_before = cc.material_balance(board, self._agent)
        board.push(move)
        self._moves += 1
        outcome = cc.game_outcome(board)
        if outcome is None:
            board.push(self._opponent_move())
            outcome = cc.game_outcome(board)
        gained = cc.material_balance(board, self._agent) - material_before
        reward = self.material_reward * gained
        if outcome is not None and outcome.winner is not None:
            reward += 1.0 if outcome.winner == self._agent else -1.0
        # The observation counts the moves left, so the limit is part of the task: it terminates
        # (no bootstrap), it does not truncate (envs/base.py, "Terminated vs truncated").
        out_of_moves = outcome is None and self._moves >= self.max_moves
        ended = outcome is not None or out_of_moves
        return self._observation(), reward, ended, False, self._info(move_limit=out_of_moves)

    def expert_action(self, rng) -> str:
        if self._stockfish is not None:
            move = self._stockfish.move(self._board)
        else:
            moves = list(self._board.legal_moves)
            move = moves[int(rng.integers(len(moves)))]
        return cc.move_text(self._board, move, self.move_format)

    def legal_actions(self) -> list[str]:
        return cc.legal_move_texts(self._board, self.move_format)

    def render(self) -> str | None:
        return self._observation() if self.render_mode == "ansi" else None

    def close(self) -> None:
        if self._stockfish is not None:
            self._stockfish.close()

    def _opponent_move(self) -> chess.Move:
        if self.opponent == "stockfish":
            return self._stockfish.move(self._board, self.skill_level)
        moves = list(self._board.legal_moves)
        return moves[int(self.np_random.integers(len(moves)))]

    def _info(self, invalid: bool = False, move_limit: bool = False) -> dict:
        won = self._board.is_checkmate() and self._board.turn != self._agent
        return {"invalid_action": invalid, "success": won, "move_limit": move_limit}

    def _observation(self) -> str:
        moves_left = self.max_moves - self._moves
        return cc.observation(
            self._board,
            self.move_format,
            moves_left,
            self.show_fen,
            self.show_legal_moves,
            self.compact,
        )
