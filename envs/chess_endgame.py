"""Chess endgame as text: mate a lone king with king and queen or king and rook."""

from __future__ import annotations

import math

import chess
import chess.engine

from envs import chess_common as cc
from envs.base import TextEnv

MATERIALS = {"KQK": chess.QUEEN, "KRK": chess.ROOK}
DEFENDERS = ("random", "stockfish")
DEFAULT_MAX_MOVES = {"KQK": 30, "KRK": 40}
LONGEST_MATE = {"KQK": 10, "KRK": 16}  # agent moves, with best play by both sides


class ChessEndgameEnv(TextEnv):
    """
    ## Description
    The agent holds the strong side of a random legal king-and-queen (KQK) or king-and-rook
    (KRK) versus king position, with the agent to move, and must checkmate the defender
    within `max_moves` of its own moves. The defender plays uniformly random legal moves or
    Stockfish's. Every such start position is a forced win, but a careless move stalemates
    or lets the king take the undefended piece (a draw).

    ## Action Space
    Text: one move, in UCI ("e2e4", "a7a8q") or SAN ("Qe7+", "Rxa1", "O-O"), whichever the
    env's `move_format`; both are accepted regardless (surrounding whitespace is ignored).
    Any other string (unparseable, illegal, ambiguous, the null move) is an invalid move: it
    never raises, it ends the episode. The declared space is `Text(max_length=7)` over the
    characters of UCI and SAN moves, but the env accepts any `str`.

    ## Observation Space
    Text: a header line naming the side to move (the agent's colour), the move format and
    the agent moves left, then the board as python-chess prints it (8 lines of 8
    space-separated squares, White at the bottom; upper case White, lower case Black, "."
    empty), optionally a "FEN: ..." line and a "Legal: ..." line of every legal move in the
    move format. For example, with `show_fen=True`:
    ```
    White to move (uci), moves left: 30
    . . . . . . . .
    . . . . k . . .
    . . . . . . . .
    . . . . . . . .
    . . . . . . . .
    . . . . . . . .
    . . . . . . . .
    K Q . . . . . .
    FEN: 8/4k3/8/8/8/8/8/KQ6 w - - 0 1
    ```
    After a step the board includes the defender's reply, so the agent is to move unless the
    episode has ended.

    ## Starting State
    Kings and the agent's piece on distinct uniformly random squares (rejection-sampled
    until the position is legal: kings apart, the defender not in check, the game not over),
    the agent to move with the colour of `agent_color`; with `max_start_dtm` only positions
    the tablebase rates mate in at most that many agent moves. `reset(options={"fen": FEN})`
    starts from FEN instead: a legal KQK/KRK position (per `material`) whose side to move is
    the strong side, which the agent then plays.

    ## Rewards
    - Checkmate: +1
    - Draw (stalemate, a capture of the agent's piece, threefold repetition, fifty moves
      without capture): 0
    - Running out of moves: 0
    - Invalid move: -invalid_penalty (default 0: an invalid move simply loses the task)
    - Any other step: 0
    - Shaping, on every valid step, added to the above: `material_reward` times the change of
      the agent's material balance over the step (only the defender can capture: losing the
      queen costs 9 times it, the rook 5). Off by default (0.0), as in `Chess-v0`.
    - Tablebase shaping (an oracle: needs the Gaviota tables), on every step:
      `Φ(after) - Φ(before)` with the potential `Φ = tablebase_reward * (1 - dtm / (L + 1))`
      while mate can be forced (`L`: the longest mate, 10 moves for KQK, 16 for KRK),
      `tablebase_reward` at mate and 0 once the win is gone or the episode ends without mate.
      A move that brings mate closer earns a little; one that stalemates, hangs the piece,
      repeats the position or is invalid gives back the whole potential. Over a whole game it adds up to
      `tablebase_reward` on a mate minus the start's potential, so it leaves the best policy
      unchanged (potential-based shaping). Off by default (0.0).

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
    - "success" (bool): the agent has checkmated the defender.
    - "move_limit" (bool): this step ended the episode by using the agent's last move
      (`max_moves`) without the game ending.
    Where the Gaviota tables for `material` are installed (`tablebase_available`), also:
    - "dtm" (int): the tablebase's distance to mate of the observed position, in agent moves
      (1: mate in one) with best play by both; 0 if it is drawn or already mate.
    - "value" (float): 1.0 if the agent can still force mate within the moves it has left
      (0 < dtm <= moves left), else 0.0; once the episode has ended, its result (1.0 after
      mate, else 0.0). This is the exact value of the state against a perfect defender.

    ## Demonstrator
    `expert_action(rng)`: with the tablebases, a move that keeps the win with the shortest
    distance to mate (ties broken by `rng`); else Stockfish's move (when installed); else a
    greedy fallback: mate in one if there is one, else a move that neither stalemates nor
    hangs the piece and leaves the defender the fewest replies, then brings the kings
    closest (not guaranteed to mate). `legal_actions()` lists the legal moves in
    `move_format`.

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("ChessEndgame-v0", material="KQK", defender="random", agent_color="white",
             max_moves=None, move_format="uci", show_fen=False, show_legal_moves=False, compact=False,
             invalid_penalty=0.0, material_reward=0.0, tablebase_reward=0.0, max_start_dtm=None, depth=10,
             stockfish_path=envs.chess_common.STOCKFISH_PATH,
             tablebase_dir=envs.chess_common.GAVIOTA_DIR, render_mode=None)
    ```
    - `material`: "KQK" or "KRK", the agent's pieces against the lone king.
    - `defender`: "random" (uniform legal moves) or "stockfish" (its best move, prolonging
      the game; raises FileNotFoundError at construction if Stockfish is not installed).
    - `agent_color`: "white", "black" or "random" (a fair coin each episode).
    - `max_moves`: agent moves before the episode terminates (shown in the observation as
      the moves left); None is 30 for KQK, 40 for KRK.
    - `move_format`: "uci" or "san", the format of the observation and `legal_actions()`.
    - `show_fen`, `show_legal_moves`: add the FEN line and the legal-move line.
    - `compact`: a short header ("w 30": side to move, moves left) and the diagram without
      spaces, half the characters (for character-level models).
    - `invalid_penalty`: >= 0, the reward for an invalid move is its negative.
    - `material_reward`: >= 0, the coefficient of the material shaping reward.
    - `tablebase_reward`: >= 0, the scale of the tablebase shaping reward. Needs the Gaviota
      tables (ValueError without).
    - `max_start_dtm`: None (any position), or a curriculum of start positions near mate: only
      those with mate in 1..max_start_dtm agent moves (about 2% of KQK positions are mate in
      1, 11% in at most 3, 24% in at most 4). Needs the Gaviota tables (ValueError without).
    - `depth`: Stockfish's search depth (defender and demonstrator).
    - `stockfish_path`: the engine binary (default: `stockfish` on PATH, else Debian's
      /usr/games/stockfish); None disables Stockfish.
    - `tablebase_dir`: a directory of Gaviota *.gtb.cp4 tables (default: Debian's
      gaviotatb); None disables them. `tablebase_status` says whether and why not they are
      used.
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
        material: str = "KQK",
        defender: str = "random",
        agent_color: str = "white",
        max_moves: int | None = None,
        move_format: str = "uci",
        show_fen: bool = False,
        show_legal_moves: bool = False,
        compact: bool = False,
        invalid_penalty: float = 0.0,
        material_reward: float = 0.0,
        tablebase_reward: float = 0.0,
        max_start_dtm: int | None = None,
        depth: int = 10,
        stockfish_path: str | None = cc.STOCKFISH_PATH,
        tablebase_dir: str | None = cc.GAVIOTA_DIR,
        render_mode: str | None = None,
    ):
        cc.check_choice("material", material, tuple(MATERIALS))
        cc.check_choice("defender", defender, DEFENDERS)
        cc.check_choice("agent_color", agent_color, cc.AGENT_COLORS)
        max_moves = DEFAULT_MAX_MOVES[material] if max_moves is None else max_moves
        cc.check_positive_int("max_moves", max_moves)
        cc.check_choice("move_format", move_format, cc.MOVE_FORMATS)
        cc.check_penalty("invalid_penalty", invalid_penalty)
        cc.check_penalty("material_reward", material_reward)
        cc.check_penalty("tablebase_reward", tablebase_reward)
        cc.check_positive_int("depth", depth)
        if max_start_dtm is not None:
            cc.check_positive_int("max_start_dtm", max_start_dtm)
        cc.check_choice("render_mode", render_mode, (None, *self.metadata["render_modes"]))
        has_stockfish = cc.stockfish_available(stockfish_path)
        if defender == "stockfish" and not has_stockfish:
            raise FileNotFoundError(
                f"defender='stockfish' needs the Stockfish binary {stockfish_path!r}, "
                f"which is not installed: {cc.INSTALL_HINT}"
            )
        self.material, self.defender, self.agent_color = material, defender, agent_color
        self.max_moves, self.move_format = max_moves, move_format
        self.show_fen, self.show_legal_moves = show_fen, show_legal_moves
        self.compact = compact
        self.invalid_penalty = float(invalid_penalty)
        self.material_reward = float(material_reward)
        self.render_mode = render_mode
        self._stockfish = (
            cc.Stockfish(stockfish_path, chess.engine.Limit(depth=depth)) if has_stockfish else None
        )
        self.tablebase_dir = tablebase_dir
        self.tablebase_available, self.tablebase_status = self._check_tablebase()
        for name, value in (("max_start_dtm", max_start_dtm), ("tablebase_reward", tablebase_reward)):
            if value and not self.tablebase_available:
                raise ValueError(f"{name}={value} needs the Gaviota tables: {self.tablebase_status}")
        self.tablebase_reward = float(tablebase_reward)
        self.max_start_dtm = max_start_dtm
        self.observation_space, self.action_space = cc.spaces()
        self._piece = MATERIALS[material]
        self._board = chess.Board(None)
        self._moves, self._potential = 0, 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        fen = (options or {}).get("fen")
        self._board = self._random_position() if fen is None else self._position_from(fen)
        self._agent, self._moves = self._board.turn, 0
        info = self._info(ended=False)
        self._potential = self._potential_of(info, ended=False)
        return self._observation(), info

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        board = self._board
        move = cc.parse_move(board, action)
        if move is None:
            info = self._info(ended=True, invalid=True)
            return self._observation(), -self.invalid_penalty - self._potential, True, False, info
        material_before = self._material()
        potential_before = self._potential
        board.push(move)
        self._moves += 1
        outcome = cc.game_outcome(board)
        if outcome is None:
            board.push(self._defender_move())
            outcome = cc.game_outcome(board)  # a lone king never mates: a draw at worst
        mated = outcome is not None and outcome.winner is not None
        gained = self._material() - material_before
        # The observation counts the moves left, so the limit is part of the task: it terminates
        # (no bootstrap), it does not truncate (envs/base.py, "Terminated vs truncated").
        out_of_moves = outcome is None and self._moves >= self.max_moves
        ended = outcome is not None or out_of_moves
        info = self._info(ended, move_limit=out_of_moves)
        self._potential = self._potential_of(info, ended)
        shaping = self.material_reward * gained + self._potential - potential_before
        reward = float(mated) + shaping
        return self._observation(), reward, ended, False, info

    def expert_action(self, rng) -> str:
        board = self._board
        if self.tablebase_available:
            moves = self._tablebase_best_moves()
        elif self._stockfish is not None:
            moves = [self._stockfish.move(board)]
        else:
            moves = _greedy_best_moves(board)
        return cc.move_text(board, moves[int(rng.integers(len(moves)))], self.move_format)

    def legal_actions(self) -> list[str]:
        return cc.legal_move_texts(self._board, self.move_format)

    @property
    def board(self) -> chess.Board:
        """A copy of the current position (for analysis; the env's own board stays private)."""
        return self._board.copy()

    def render(self) -> str | None:
        return self._observation() if self.render_mode == "ansi" else None

    def close(self) -> None:
        if self._stockfish is not None:
            self._stockfish.close()

    def _check_tablebase(self) -> tuple[bool, str]:
        if self.tablebase_dir is None:
            return False, "disabled (tablebase_dir=None)"
        probe = chess.Board(f"8/8/8/4k3/8/8/8/K{self.material[1]}6 w - - 0 1")
        try:
            cc.open_gaviota(self.tablebase_dir).probe_dtm(probe)
        except (OSError, KeyError) as err:  # no such directory; MissingTableError
            missing = f"no {self.material} table in {self.tablebase_dir!r} ({err!r})"
            return False, f"{missing}: {cc.INSTALL_HINT}"
        return True, f"Gaviota {self.material} table in {self.tablebase_dir!r}"

    def _random_position(self) -> chess.Board:
        agent = cc.agent_color(self.agent_color, self.np_random)
        pieces = (chess.Piece(chess.KING, agent), chess.Piece(self._piece, agent))
        pieces += (chess.Piece(chess.KING, not agent),)
        while True:
            squares = self.np_random.choice(64, size=3, replace=False)
            board = chess.Board(None)
            board.set_piece_map(dict(zip(map(int, squares), pieces)))
            board.turn = agent
            if board.is_valid() and board.outcome() is None and self._near_enough(board):
                return board

    def _near_enough(self, board: chess.Board) -> bool:
        """Whether the agent to move in ``board`` can mate within ``max_start_dtm`` moves (no limit: True)."""
        if self.max_start_dtm is None:
            return True
        plies = cc.open_gaviota(self.tablebase_dir).probe_dtm(board)
        return 0 < (plies + 1) // 2 <= self.max_start_dtm

    def _position_from(self, fen: str) -> chess.Board:
        board = chess.Board(fen)  # raises ValueError for a malformed FEN
        if not (
            board.is_valid()
            and board.outcome() is None
            and len(board.piece_map()) == 3
            and board.pieces(self._piece, board.turn)
        ):
            raise ValueError(
                f"fen={fen!r} is not valid; it must be a legal {self.material} position, "
                "not over, with the strong side to move"
            )
        return board

    def _defender_move(self) -> chess.Move:
        if self.defender == "stockfish":
            return self._stockfish.move(self._board)
        moves = list(self._board.legal_moves)
        return moves[int(self.np_random.integers(len(moves)))]

    def _tablebase_best_moves(self) -> list[chess.Move]:
        """The moves that keep the win with the shortest mate (all of them in a drawn position)."""
        tablebase, board = cc.open_gaviota(self.tablebase_dir), self._board
        plies_to_mate = {}
        for move in board.legal_moves:
            board.push(move)
            if board.is_checkmate():
                plies_to_mate[move] = 0
            else:
                dtm = tablebase.probe_dtm(board)  # the defender's view: < 0 it gets mated
                plies_to_mate[move] = -dtm if dtm < 0 else math.inf  # 0: a draw
            board.pop()
        best = min(plies_to_mate.values())
        return [move for move, plies in plies_to_mate.items() if plies == best]

    def _dtm(self) -> int:
        """The observed position's distance to mate in agent moves (0: drawn or mate)."""
        plies = cc.open_gaviota(self.tablebase_dir).probe_dtm(self._board)
        if self._board.turn != self._agent:
            plies = -plies
        return max(0, (plies + 1) // 2)  # the agent mates on odd plies from its own turn

    def _material(self) -> int:
        """The agent's material balance, for the material shaping (0, uncomputed, when that is off)."""
        return cc.material_balance(self._board, self._agent) if self.material_reward else 0

    def _potential_of(self, info: dict, ended: bool) -> float:
        """The tablebase shaping's potential of the current position, from its ``_info`` (mate, and
        the distance to it); 0.0 when the shaping is off. Kept as ``self._potential`` from one step
        to the next, so each position is probed once (by ``_info``)."""
        if not self.tablebase_reward:
            return 0.0
        if info["success"]:
            return self.tablebase_reward
        dtm = info.get("dtm", 0)
        return self.tablebase_reward * (1 - dtm / (LONGEST_MATE[self.material] + 1)) if dtm and not ended else 0.0

    def _info(self, ended: bool, invalid: bool = False, move_limit: bool = False) -> dict:
        mated = self._board.is_checkmate()
        info = {"invalid_action": invalid, "success": mated, "move_limit": move_limit}
        if self.tablebase_available:
            dtm = self._dtm()
            moves_left = self.max_moves - self._moves
            info["dtm"] = dtm
            info["value"] = float(mated if ended else 0 < dtm <= moves_left)
        return info

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


def _greedy_best_moves(board: chess.Board) -> list[chess.Move]:
    """Mate in one, else the safe moves (no stalemate, no hanging piece) leaving the defender
    the fewest replies, then with the kings closest."""

    def score(move: chess.Move) -> tuple[float, int]:
        board.push(move)
        replies = list(board.legal_moves)
        mate = board.is_checkmate()
        hangs = any(board.is_capture(reply) for reply in replies)  # the lone king takes it
        kings = chess.square_distance(board.king(chess.WHITE), board.king(chess.BLACK))
        board.pop()
        if mate:
            return -1, 0
        return (math.inf if hangs or not replies else len(replies)), kings

    scores = {move: score(move) for move in board.legal_moves}
    best = min(scores.values())
    return [move for move, value in scores.items() if value == best]
