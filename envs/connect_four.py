"""Connect Four as text, against a built-in opponent, with an exact alpha-beta solver."""

from __future__ import annotations

import string
from functools import lru_cache
from operator import itemgetter

from envs.base import TextEnv, check_choice, check_penalty, text_space

AGENT, OPPONENT, EMPTY = "X", "O", "."
OPPONENTS = ("random", "heuristic", "solver")
FIRST_PLAYERS = ("agent", "opponent", "random")
SOLVER_MAX_CELLS = 20  # the solver (info "value", opponent="solver") only up to this many cells
MAX_COLS = 9  # one digit per column, so the footer lines up with the board

_SWAP = str.maketrans({AGENT: OPPONENT, OPPONENT: AGENT})


class Game:
    """The rules of one board shape, and an exact solver sharing one transposition table.

    A board is a string of `rows * cols` characters (".", "X", "O"), column by column from the
    left, each column from the bottom up, so a drop is one `str.find`. Columns are 0-based here.
    Get instances from `game()`: they are shared, and copying an env does not copy them.
    """

    def __init__(self, rows: int, cols: int, connect: int):
        self.rows, self.cols = rows, cols
        self.empty = EMPTY * (rows * cols)
        cell = {(r, c): c * rows + r for r in range(rows) for c in range(cols)}
        lines = [
            [cell[r + i * dr, c + i * dc] for i in range(connect)]
            for (r, c) in cell
            for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1))
            if (r + (connect - 1) * dr, c + (connect - 1) * dc) in cell
        ]
        # For each cell, the other cells of every winning line through it.
        self._lines_through = tuple(
            tuple(tuple(j for j in line if j != i) for line in lines if i in line)
            for i in range(rows * cols)
        )
        self._order = sorted(range(cols), key=self.centre_rank)
        self._mirror = itemgetter(
            *(cell[r, cols - 1 - c] for c in range(cols) for r in range(rows))
        )
        newline = rows * cols  # index of the "\n" that `observation` appends to the board
        self._rows_top_down = itemgetter(
            *(
                cell[r, c] if c < cols else newline
                for r in reversed(range(rows))
                for c in range(cols + 1)
            )
        )
        self.footer = string.digits[1 : cols + 1] + "\n"
        self._bounds: dict[str, tuple[int, int]] = {}  # canonical board, X to move -> (lo, hi)
        self._solved: dict[str, tuple[int, tuple[int, ...]]] = {}

    def __deepcopy__(self, memo) -> Game:
        return self  # immutable rules plus a shared cache

    def centre_rank(self, col: int) -> tuple[int, int]:
        """Sort key: columns nearest the centre first, the left one of a tied pair first."""
        return abs(2 * col - (self.cols - 1)), col

    def legal_columns(self, board: str) -> tuple[int, ...]:
        return tuple(c for c in range(self.cols) if board[c * self.rows + self.rows - 1] == EMPTY)

    def drop(self, board: str, col: int, mark: str) -> tuple[str, int]:
        """`board` with `mark` dropped into `col`, and the cell it landed in (-1: column full)."""
        cell = board.find(EMPTY, col * self.rows, (col + 1) * self.rows)
        return (board[:cell] + mark + board[cell + 1 :], cell) if cell >= 0 else (board, -1)

    def wins(self, board: str, cell: int) -> bool:
        """Whether the mark in `cell` completes a line (only lines through `cell` can be new)."""
        mark = board[cell]
        for line in self._lines_through[cell]:
            for j in line:
                if board[j] != mark:
                    break
            else:
                return True
        return False

    def winning_columns(self, board: str, mark: str) -> list[int]:
        """The columns where `mark` would complete a line right now."""
        moves = []
        for col in self.legal_columns(board):
            child, cell = self.drop(board, col, mark)
            if self.wins(child, cell):
                moves.append(col)
        return moves

    def heuristic_moves(self, board: str, mark: str) -> list[int]:
        """Winning columns if any, else ones blocking the other side's immediate win, else all.

        It does not look further: it may play under a cell the other side needs.
        """
        other = OPPONENT if mark == AGENT else AGENT
        return (
            self.winning_columns(board, mark)
            or self.winning_columns(board, other)
            or list(self.legal_columns(board))
        )

    def observation(self, board: str) -> str:
        return "".join(self._rows_top_down(board + "\n")) + self.footer

    def solve(self, board: str, player: str) -> tuple[int, tuple[int, ...]]:
        """Game-theoretic value of an unfinished `board` for `player` to move, and its optimal
        columns. The value is +1 (forced win), 0 (draw with best play) or -1 (forced loss); a
        full board is (0, ())."""
        if player == OPPONENT:
            board = board.translate(_SWAP)  # the search always has X to move
        if board not in self._solved:
            value = self._negamax(board, -1, 1)
            moves = []
            for col in self.legal_columns(board):
                child, cell = self.drop(board, col, AGENT)
                # A null window at the best value is enough to tell whether this move reaches it.
                if self.wins(child, cell) or value <= -self._negamax(
                    child.translate(_SWAP), -value, 1 - value
                ):
                    moves.append(col)
            self._solved[board] = value, tuple(moves)
        return self._solved[board]

    def _negamax(self, board: str, alpha: int, beta: int) -> int:
        """Fail-soft alpha-beta value of `board` for X to move: exact if strictly inside
        (alpha, beta), else a bound on the side of the window it falls."""
        children = []
        for col in self._order:
            child, cell = self.drop(board, col, AGENT)
            if cell >= 0:
                if self.wins(child, cell):
                    return 1
                children.append(child.translate(_SWAP))
        if not children:
            return 0
        key = min(board, "".join(self._mirror(board)))  # a position and its mirror image agree
        lo, hi = self._bounds.get(key, (-1, 1))
        if lo == hi or lo >= beta:
            return lo
        if hi <= alpha:
            return hi
        alpha, beta = max(alpha, lo), min(beta, hi)
        best = -1
        for child in children:
            value = -self._negamax(child, -beta, -max(alpha, best))
            if value > best:
                best = value
                if best >= beta:
                    break
        if best <= alpha:
            hi = best
        elif best >= beta:
            lo = best
        else:
            lo = hi = best
        self._bounds[key] = lo, hi
        return best


@lru_cache(maxsize=None)
def game(rows: int, cols: int, connect: int) -> Game:
    """The shared `Game` for a board shape."""
    return Game(rows, cols, connect)


class ConnectFourEnv(TextEnv):
    """
    ## Description
    Connect Four on a small board (default 4 rows x 5 columns, connect 4). The agent plays X
    against a built-in opponent playing O. A move drops a mark into a column, where it falls
    to the lowest free cell. The first to line up `connect` marks in a row, column or diagonal
    wins; a full board without one is a draw.

    The default 4x5 board keeps the exact solver (negamax, alpha-beta, a transposition table on
    the mirror-canonical board, centre-first move order) cheap in pure Python: solving the
    empty board takes about 0.6 s of CPU (measured; 5x5 took 5 s, 4x6 4 s). After that a step
    costs about 0.4 ms on average while the table fills (rarely up to ~0.2 s in a corner of the
    game not met before), under 0.1 ms once it is warm. With best play the empty 4x5 board is
    a draw, and only the three middle columns keep it; an edge opening loses. The solver is
    limited to boards of at most 20 cells; the slowest shape within that limit, 2x9 connect 4,
    took 2.2 s. Its table is shared by all envs of a shape in a process and grows with the
    positions met (about 200 bytes each; ~130 MB after 6000 random games on the default board).

    ## Action Space
    Text: the column to drop into, "1" to `cols` from the left. After `str.strip()` it must
    be exactly that number naming a column that is not full. Any other string (empty, "0",
    "a", a full column, ...) is an invalid move: it never raises, it ends the episode with a
    penalty. The declared space is `Text(max_length=len(str(cols)), charset=string.digits)`,
    but the env accepts any `str`.

    ## Observation Space
    Text: the board, top row first, one character per cell ("." free, "X" agent, "O"
    opponent), each row ending with "\\n", then a footer of the column numbers. The empty
    default board is ".....\\n" * 4 + "12345\\n". The board after a step includes the opponent's
    reply, so the agent is always to move, unless the episode has ended (then it is the final
    board).

    ## Starting State
    The empty board, or with `first_player="opponent"` (or "random" and the coin says so) a
    board with the opponent's first O already dropped.

    ## Rewards
    - Win: +1
    - Draw: 0
    - Loss: -1
    - Invalid move: -invalid_penalty (default -2: an illegal move forfeits the game and costs
      more than a loss, so playing on is always better than breaking the rules)
    - Any other step: 0

    ## Episode End
    Termination: a win, a loss, a draw, or an invalid move. There is no truncation; an
    episode has at most ceil(rows * cols / 2) agent moves.

    ## Information
    `reset()` and `step()` return a dict with:
    - "invalid_action" (bool): the action was invalid (always False on reset).
    - "success" (bool): the agent won (True only on the final step of a won game).
    - "value" (float), only on boards of at most `SOLVER_MAX_CELLS` (20) cells: the
      game-theoretic value of the state for the agent to move (+1/0/-1), or the actual result
      once the episode has ended (-1 after an invalid move). Larger boards omit it.
    - "legal_moves" (tuple[int, ...]): the columns (1-based) that are not full; empty once the
      episode has ended.

    ## Arguments
    ```python
    import gymnasium as gym
    import envs
    gym.make("ConnectFour-v0", rows=4, cols=5, connect=4, opponent="random",
             first_player="agent", invalid_penalty=2.0, render_mode=None)
    ```
    - `rows`, `cols`, `connect`: the board shape and the line length that wins; `rows` >= 1,
      1 <= `cols` <= 9 (one digit per column), 2 <= `connect` <= max(rows, cols).
    - `opponent`: "random" (uniform over legal columns), "heuristic" (wins at once if it can,
      else blocks one of the agent's immediate wins, else uniform; it does not avoid moves
      that let the agent win on top of them) or "solver" (uniform over optimal moves; never
      loses a game it can draw or win). "solver" needs a board of at most 20 cells.
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
        rows: int = 4,
        cols: int = 5,
        connect: int = 4,
        opponent: str = "random",
        first_player: str = "agent",
        invalid_penalty: float = 2.0,
        render_mode: str | None = None,
    ):
        if rows < 1:
            raise ValueError(f"rows={rows!r} is not valid; it must be >= 1")
        if not 1 <= cols <= MAX_COLS:
            raise ValueError(f"cols={cols!r} is not valid; it must be in [1, {MAX_COLS}]")
        if not 2 <= connect <= max(rows, cols):
            raise ValueError(
                f"connect={connect!r} is not valid; it must be in [2, max(rows, cols)]"
                f" = [2, {max(rows, cols)}]"
            )
        check_choice("opponent", opponent, OPPONENTS)
        self._solvable = rows * cols <= SOLVER_MAX_CELLS
        if opponent == "solver" and not self._solvable:
            raise ValueError(
                f"opponent='solver' is not valid for a {rows}x{cols} board; it needs at most"
                f" {SOLVER_MAX_CELLS} cells, else choose one of ('random', 'heuristic')"
            )
        check_choice("first_player", first_player, FIRST_PLAYERS)
        check_penalty("invalid_penalty", invalid_penalty)
        check_choice("render_mode", render_mode, (None, *self.metadata["render_modes"]))
        self.opponent = opponent
        self.first_player = first_player
        self.invalid_penalty = float(invalid_penalty)
        self.render_mode = render_mode
        self._game = game(rows, cols, connect)
        self._column_of = {str(c + 1): c for c in range(cols)}
        length = (rows + 1) * (cols + 1)
        self.observation_space = text_space(
            EMPTY + AGENT + OPPONENT + "\n" + self._game.footer[:-1], length, length
        )
        self.action_space = text_space(string.digits, max_length=len(str(cols)))
        self._board = self._game.empty

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._board = self._game.empty
        if self.first_player == "opponent" or (
            self.first_player == "random" and self.np_random.random() < 0.5
        ):
            self._board = self._game.drop(self._board, self._opponent_move(), OPPONENT)[0]
        return self._observation(), self._info()

    def step(self, action: str):
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        g = self._game
        col = self._column_of.get(action.strip())
        board, cell = g.drop(self._board, col, AGENT) if col is not None else (self._board, -1)
        if cell < 0:
            reward = -self.invalid_penalty
            return self._observation(), reward, True, False, self._info(-1, invalid=True)

        self._board = board
        if g.wins(board, cell):
            return self._observation(), 1.0, True, False, self._info(1)
        if EMPTY in board:
            self._board, cell = g.drop(board, self._opponent_move(), OPPONENT)
            if g.wins(self._board, cell):
                return self._observation(), -1.0, True, False, self._info(-1)
        if EMPTY not in self._board:
            return self._observation(), 0.0, True, False, self._info(0)
        return self._observation(), 0.0, False, False, self._info()

    def expert_action(self, rng) -> str:
        """One move, the same for the same board, so a small policy can imitate it exactly: a move
        that wins at once if there is one, else the solver's optimal move nearest the centre; in
        a lost position (where every move is "optimal") the heuristic's block, so the expert
        still fights a fallible opponent. Boards too large to solve use the heuristic alone.
        `rng` is unused: ties are broken by the centre-first order, not at random."""
        g, board = self._game, self._board
        moves = g.heuristic_moves(board, AGENT)
        if self._solvable:
            value, optimal = g.solve(board, AGENT)
            if value > -1:
                moves = [c for c in g.winning_columns(board, AGENT) if c in optimal] or optimal
        return str(min(moves, key=g.centre_rank) + 1)

    @property
    def rules(self) -> Game:
        """The board shape's rules and exact solver (shared by every env of that shape)."""
        return self._game

    def legal_actions(self) -> list[str]:
        return [str(c + 1) for c in self._game.legal_columns(self._board)]

    def render(self) -> str | None:
        return self._observation() if self.render_mode == "ansi" else None

    def _opponent_move(self) -> int:
        g, board = self._game, self._board
        if self.opponent == "random":
            moves = g.legal_columns(board)
        elif self.opponent == "heuristic":
            moves = g.heuristic_moves(board, OPPONENT)
        else:
            moves = g.solve(board, OPPONENT)[1]
        return moves[int(self.np_random.random() * len(moves))]  # uniform, cheaper than integers()

    def _observation(self) -> str:
        return self._game.observation(self._board)

    def _info(self, result: int | None = None, invalid: bool = False) -> dict:
        """The info dict; `result` is the final reward sign once the episode has ended."""
        info = {
            "invalid_action": invalid,
            "success": result == 1,
            "legal_moves": () if result is not None else tuple(
                c + 1 for c in self._game.legal_columns(self._board)
            ),
        }
        if self._solvable:
            info["value"] = float(
                result if result is not None else self._game.solve(self._board, AGENT)[0]
            )
        return info
