"""Helpers shared by the chess envs: move text, observations, game end, Stockfish, Gaviota tables.

The optional system components come from `make system-deps` (Debian packages `stockfish` and
`gaviotatb`); without them the envs still run, with random opponents and no tablebase info.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import string
import sys
import threading
import weakref

import chess
import chess.engine
import chess.gaviota
from gymnasium.spaces import Text

from envs.base import check_choice, check_penalty, check_positive_int, text_space  # noqa: F401 (cc.check_*)

STOCKFISH_PATH = shutil.which("stockfish") or "/usr/games/stockfish"  # Debian puts it in /usr/games
GAVIOTA_DIR = "/usr/share/gaviotatb/gtb4"  # Debian gaviotatb: 3-piece tables, cp4 (LZMA) scheme
INSTALL_HINT = "run `make system-deps` (or `apt-get install stockfish gaviotatb`)"

MOVE_FORMATS = ("uci", "san")
AGENT_COLORS = ("white", "black", "random")
COLOR_NAMES = {chess.WHITE: "White", chess.BLACK: "Black"}
PIECE_VALUES = {chess.PAWN: 1, chess.KNIGHT: 3, chess.BISHOP: 3, chess.ROOK: 5, chess.QUEEN: 9}


def spaces() -> tuple[Text, Text]:
    """A new (observation, action) space pair; each env owns its own (their samplers' seeds)."""
    # Header, board, FEN and legal-move lines; 2048 > any position's longest legal-move line.
    observation_space = text_space(string.ascii_letters + string.digits + " \n.,:()/-+#=", 2048)
    # A move is at most 7 characters ("exd8=Q+", "Qh4xe1#"); UCI promotions are lower case.
    return observation_space, text_space("abcdefgh12345678KQRBNqrbnxO-=+#", max_length=7)


def agent_color(choice: str, rng) -> chess.Color:
    """The agent's colour for an episode: `choice` is one of AGENT_COLORS."""
    if choice == "random":
        return bool(rng.random() < 0.5)
    return choice == "white"


def parse_move(board: chess.Board, text: str) -> chess.Move | None:
    """The legal move that `text` names in UCI or SAN (surrounding whitespace ignored), or None."""
    text = text.strip()
    for parse in (board.parse_uci, board.parse_san):
        try:
            move = parse(text)
        except ValueError:  # python-chess's invalid, illegal and ambiguous move errors
            continue
        return move or None  # both parsers return the null move ("0000", "--") unchecked
    return None


def move_text(board: chess.Board, move: chess.Move, move_format: str) -> str:
    return board.san(move) if move_format == "san" else move.uci()


def legal_move_texts(board: chess.Board, move_format: str) -> list[str]:
    return [move_text(board, move, move_format) for move in board.legal_moves]


def observation(
    board: chess.Board,
    move_format: str,
    moves_left: int,
    show_fen: bool,
    show_legal_moves: bool,
    compact: bool = False,
) -> str:
    """A header line, the 8-line diagram (White at the bottom), optional FEN and legal moves.

    `compact` (for character-level models, whose cost grows with every character of a long
    game's transcript) shortens the header to "w 30" (side to move, moves left) and drops the
    diagram's spaces: 77 characters instead of 164 at the start of a 30-move endgame.
    """
    if compact:
        lines = [f"{'w' if board.turn == chess.WHITE else 'b'} {moves_left}", str(board).replace(" ", "")]
    else:
        lines = [f"{COLOR_NAMES[board.turn]} to move ({move_format}), moves left: {moves_left}"]
        lines.append(str(board))
    if show_fen:
        lines.append(f"FEN: {board.fen()}")
    if show_legal_moves:
        lines.append("Legal: " + " ".join(legal_move_texts(board, move_format)))
    return "\n".join(lines) + "\n"


def game_outcome(board: chess.Board) -> chess.Outcome | None:
    """The game's end, or None. Fifty-move and threefold-repetition draws are taken at once
    (as if claimed); `is_repetition` is cheap, unlike `outcome(claim_draw=True)`."""
    outcome = board.outcome()
    if outcome is None and board.is_repetition(3):
        outcome = chess.Outcome(chess.Termination.THREEFOLD_REPETITION, None)
    elif outcome is None and board.is_fifty_moves():
        outcome = chess.Outcome(chess.Termination.FIFTY_MOVES, None)
    return outcome


def material_balance(board: chess.Board, color: chess.Color) -> int:
    """`color`'s material minus the other side's (pawn 1, knight and bishop 3, rook 5, queen 9)."""
    return sum(
        value * (len(board.pieces(piece, color)) - len(board.pieces(piece, not color)))
        for piece, value in PIECE_VALUES.items()
    )


@functools.cache
def open_gaviota(directory: str):
    """The Gaviota tables in `directory`, opened once per process and shared by every env
    (probing is read-only), and closed when the process exits. Raises OSError if the directory
    does not exist."""
    tablebase = chess.gaviota.open_tablebase(directory)
    atexit.register(tablebase.close)
    return tablebase


def stockfish_available(path: str | None) -> bool:
    return path is not None and shutil.which(path) is not None


def _die_with_parent(parent_pid: int) -> None:
    """In the forked engine, before exec: get SIGKILL when the forking thread (python-chess's
    event loop, alive as long as the engine) ends, so no engine outlives a crashed or
    SIGKILLed trainer, even if a forked worker still holds its stdin (Linux PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 == PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _start_engine(path: str) -> chess.engine.SimpleEngine:
    """Start a UCI engine from a daemon thread: SimpleEngine's event-loop thread inherits
    daemon status from its creator, so an env never closed cannot hang interpreter exit."""
    popen_args = {}
    if sys.platform == "linux":
        popen_args["preexec_fn"] = functools.partial(_die_with_parent, os.getpid())
    result = []

    def start() -> None:
        try:
            result.append(chess.engine.SimpleEngine.popen_uci(path, **popen_args))
        except BaseException as err:  # re-raised in the caller's thread
            result.append(err)

    thread = threading.Thread(target=start, name="stockfish-start", daemon=True)
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _shut_down(engine: chess.engine.SimpleEngine) -> None:
    with contextlib.suppress(chess.engine.EngineError, TimeoutError):
        engine.quit()  # fails if the engine already died; close() then cleans up
    engine.close()


class Stockfish:
    """A Stockfish process (1 thread, 1 MB hash) started on first use and quit by `close()`,
    garbage collection or interpreter exit. A deep copy (`env.clone()`) starts its own.

    Each search starts with `ucinewgame` (a new `game` object), clearing the hash, so the
    move depends only on the position and the limit: clones continue like the original, and
    a depth limit with Skill Level 20 is reproducible. Skill Level < 20 picks its weakened
    move with Stockfish's own, time-seeded random generator: not reproducible.
    """

    def __init__(self, path: str, limit: chess.engine.Limit):
        self.path, self.limit = path, limit
        self._engine: chess.engine.SimpleEngine | None = None

    def move(self, board: chess.Board, skill_level: int = 20) -> chess.Move:
        if self._engine is None:
            self._engine = _start_engine(self.path)
            self._engine.configure({"Threads": 1, "Hash": 1})
            self._finalizer = weakref.finalize(self, _shut_down, self._engine)
        options = {"Skill Level": skill_level}
        return self._engine.play(board, self.limit, game=object(), options=options).move

    def close(self) -> None:
        if self._engine is not None:
            self._finalizer()
            self._engine = None

    def __deepcopy__(self, memo) -> Stockfish:
        return Stockfish(self.path, self.limit)
