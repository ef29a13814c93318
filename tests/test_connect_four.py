from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers ConnectFour-v0)
from envs.connect_four import AGENT, OPPONENT, ConnectFourEnv, game
from tests.env_checks import check_env_without_warnings

EMPTY_OBS = ".....\n" * 4 + "12345\n"


def build(picture: str, connect: int = 4) -> str:
    """The board drawn in `picture` (rows top to bottom, as in the observation), built by drops."""
    rows = picture.split()
    g = game(len(rows), len(rows[0]), connect)
    board = g.empty
    for col in range(len(rows[0])):
        for row in reversed(rows):
            if row[col] != ".":
                board = g.drop(board, col, row[col])[0]
    assert g.observation(board) == "".join(row + "\n" for row in rows) + g.footer
    return board


def board_of(obs: str, connect: int = 4) -> str:
    return build("\n".join(obs.split()[:-1]), connect)  # the footer is the last line


def has_line(grid: tuple[str, ...], mark: str, connect: int) -> bool:
    """Whether `grid` (rows of text) holds `connect` of `mark` in a line, by scanning every line."""
    n_rows, n_cols = len(grid), len(grid[0])
    lines = [
        *grid,
        *("".join(row[c] for row in grid) for c in range(n_cols)),
        *(
            "".join(grid[r][r + d] for r in range(n_rows) if 0 <= r + d < n_cols)
            for d in range(1 - n_rows, n_cols)
        ),
        *(
            "".join(grid[r][d - r] for r in range(n_rows) if 0 <= d - r < n_cols)
            for d in range(n_rows + n_cols - 1)
        ),
    ]
    return any(mark * connect in line for line in lines)


@lru_cache(maxsize=None)
def brute_force(grid: tuple[str, ...], player: str, connect: int) -> tuple[int, set[int]]:
    """Plain minimax without pruning (memoised): value for `player` and its optimal columns."""
    other = OPPONENT if player == AGENT else AGENT
    values = {}
    for col in range(len(grid[0])):
        free = [r for r in range(len(grid)) if grid[r][col] == "."]
        if free:
            row = free[-1]
            child = list(grid)
            child[row] = grid[row][:col] + player + grid[row][col + 1 :]
            child = tuple(child)
            won = has_line(child, player, connect)
            values[col] = 1 if won else -brute_force(child, other, connect)[0]
    best = max(values.values(), default=0)
    return best, {col for col, value in values.items() if value == best}


def random_move(info, rng) -> str:
    moves = info["legal_moves"]
    return str(moves[rng.integers(len(moves))])


def play_random_agent(env, rng, episodes):
    """Counts of (wins, draws, losses) for a uniformly random legal agent."""
    counts = dict(win=0, draw=0, loss=0)
    for _ in range(episodes):
        _, info = env.reset()
        terminated = False
        while not terminated:
            _, reward, terminated, truncated, info = env.step(random_move(info, rng))
            assert not truncated and not info["invalid_action"]
        assert info["success"] == (reward == 1) and info["value"] == reward
        counts[{1: "win", 0: "draw", -1: "loss"}[reward]] += 1
    return counts


def rollout(env, seed, agent_seed, steps):
    """The transcript of `steps` steps of a random legal agent, resetting at episode ends."""
    rng = np.random.default_rng(agent_seed)
    obs, info = env.reset(seed=seed)
    transcript = [(obs, info)]
    for _ in range(steps):
        obs, reward, terminated, _, info = env.step(random_move(info, rng))
        transcript.append((obs, reward, terminated, info))
        if terminated:
            obs, info = env.reset()
            transcript.append((obs, info))
    return transcript


@pytest.mark.parametrize("kwargs", [{}, dict(rows=3, cols=4, connect=3), dict(rows=6, cols=7)])
def test_check_env(kwargs):
    info = check_env_without_warnings("ConnectFour-v0", **kwargs)
    # Only boards within the solver's cell limit report a value.
    assert ("value" in info) == (kwargs.get("rows", 4) * kwargs.get("cols", 5) <= 20)


def test_initial_observation_and_info():
    obs, info = ConnectFourEnv().reset(seed=0)
    assert obs == EMPTY_OBS
    assert info == dict(invalid_action=False, success=False, value=0.0, legal_moves=(1, 2, 3, 4, 5))


def test_moves_fall_to_the_lowest_free_cell():
    env = ConnectFourEnv(opponent="heuristic")
    env.reset(seed=0)
    obs, *_ = env.step(" 3\n")  # whitespace around a valid move is fine
    assert obs.split()[3][2] == "X" and obs.count("O") == 1
    obs, *_ = env.step("3")
    column = "".join(row[2] for row in obs.split()[:4])  # top to bottom
    assert column.count("X") == 2 and "." not in column.lstrip(".")


def test_deterministic_under_seed():
    def run(seed):
        env = ConnectFourEnv(opponent="random", first_player="random")
        return rollout(env, seed=seed, agent_seed=1, steps=200)

    assert run(seed=7) == run(seed=7)
    assert run(seed=7) != run(seed=8)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_string_action_is_handled(action):
    env = ConnectFourEnv()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs)
    valid = action.strip() in {"1", "2", "3", "4", "5"}
    assert info["invalid_action"] == (not valid)
    if not valid:
        assert (obs, reward, terminated, truncated) == (EMPTY_OBS, -2.0, True, False)
        assert info["value"] == -1.0 and info["legal_moves"] == () and not info["success"]


@pytest.mark.parametrize(
    "action", ["", " ", "0", "6", "01", "a", " 3x", "3 3", "３", "²", "3" * 10_000, "\x00"]
)
def test_invalid_action_ends_episode_with_penalty(action):
    env = ConnectFourEnv(invalid_penalty=2.5)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert (obs, reward, terminated, truncated) == (EMPTY_OBS, -2.5, True, False)
    assert info["invalid_action"] and not info["success"] and info["value"] == -1.0


def test_full_column_is_invalid():
    env = ConnectFourEnv()
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    while len(info["legal_moves"]) == 5:  # play on until some column is full
        _, _, terminated, _, info = env.step(random_move(info, rng))
        if terminated:
            _, info = env.reset()
    full = ({1, 2, 3, 4, 5} - set(info["legal_moves"])).pop()
    assert str(full) not in env.legal_actions()
    _, reward, terminated, _, info = env.step(str(full))
    assert (reward, terminated, info["invalid_action"]) == (-2.0, True, True)


def test_non_string_action_is_a_type_error():
    env = ConnectFourEnv()
    env.reset(seed=0)
    with pytest.raises(TypeError):
        env.step(3)


def test_solver_known_positions():
    g = game(4, 5, 4)
    # Computed by this solver: the empty 4x5 board is a draw, kept only by the middle columns
    # (2, 3, 4 in the env's 1-based numbering); opening on an edge loses.
    assert g.solve(g.empty, AGENT) == g.solve(g.empty, OPPONENT) == (0, (1, 2, 3))
    # X to move completes the bottom row in column 4 (0-based 3).
    value, moves = g.solve(build(".....\n.....\nOO...\nXXX.."), AGENT)
    assert value == 1 and 3 in moves
    # O threatens both ends of the bottom row; X can block only one.
    double_threat = build(".....\n.....\n.XX..\n.OOO.")
    assert g.solve(double_threat, AGENT) == (-1, (0, 1, 2, 3, 4))
    assert g.solve(double_threat, OPPONENT)[0] == 1
    # One O threat: blocking it is the only move that does not lose.
    assert g.solve(build(".....\n.....\n.XX..\nXOOO."), AGENT) == (0, (4,))
    # A full board without a line is a draw, with no moves.
    full = build("XXOOX\nOOXXO\nXXOOX\nOOXXO")
    assert g.solve(full, AGENT) == g.solve(full, OPPONENT) == (0, ())


@pytest.mark.parametrize("rows, cols, connect", [(3, 4, 3), (4, 3, 3), (2, 5, 3)])
def test_solver_agrees_with_brute_force_on_random_play(rows, cols, connect):
    g = game(rows, cols, connect)
    env = ConnectFourEnv(rows, cols, connect, first_player="random")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    checked = set()
    for _ in range(30):
        obs, info = env.reset()
        terminated = False
        while not terminated:
            grid = tuple(obs.split()[:rows])
            board = board_of(obs, connect)
            for player in (AGENT, OPPONENT):
                value, moves = brute_force(grid, player, connect)
                assert g.solve(board, player) == (value, tuple(sorted(moves))), (obs, player)
            assert info["value"] == brute_force(grid, AGENT, connect)[0]
            checked.add(grid)
            obs, _, terminated, _, info = env.step(random_move(info, rng))
    assert len(checked) > 50


def test_info_value_is_ground_truth_against_the_solver():
    env = ConnectFourEnv(opponent="solver", first_player="random")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    drops = 0
    for _ in range(30):
        _, info = env.reset()
        values, terminated = [info["value"]], False
        while not terminated:
            _, reward, terminated, _, info = env.step(random_move(info, rng))
            values.append(info["value"])
        # Against perfect play the agent's value can only fall, and it ends at the result.
        assert values == sorted(values, reverse=True) and values[-1] == reward
        drops += values[0] > values[-1]
    assert drops > 0


def test_heuristic_wins_else_blocks():
    g = game(4, 5, 4)
    # X threatens column 1 (0-based 0), O can win in column 5: winning comes first.
    assert g.heuristic_moves(build(".....\nX....\nX....\nXOOO."), OPPONENT) == [4]
    assert g.heuristic_moves(build(".....\nX....\nX....\nXOO.."), OPPONENT) == [0]
    assert g.heuristic_moves(build(".....\n.....\n.....\nXOO.."), OPPONENT) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("opponent, blocks", [("heuristic", True), ("random", False)])
def test_heuristic_opponent_blocks_a_column_threat(opponent, blocks):
    env = ConnectFourEnv(opponent=opponent)
    outcomes = set()
    for seed in range(20):
        env.reset(seed=seed)
        for _ in range(4):  # X stacks column 1; only a block stops the fourth X
            obs, reward, terminated, _, info = env.step("1")
            if terminated:
                break
        outcomes.add(reward == 1)
    assert (True in outcomes) != blocks


def test_solver_opponent_never_loses_to_a_random_agent():
    # The empty board is a draw (value 0), so a perfect opponent never loses from it.
    env = ConnectFourEnv(opponent="solver", first_player="random")
    env.reset(seed=0)
    counts = play_random_agent(env, np.random.default_rng(0), episodes=40)
    assert counts["win"] == 0 and counts["loss"] > 30


def test_random_agent_statistics():
    # Measured over 20,000 seeded games, random agent moving first against each opponent:
    #   random opponent: win 0.424, draw 0.251, loss 0.325
    #   (opponent first: win 0.334, draw 0.246, loss 0.420)
    #   heuristic opponent: win 0.089, draw 0.293, loss 0.618 (5,000 games)
    #   solver opponent: win 0, draw 0.024, loss 0.976 (2,000 games)
    env = ConnectFourEnv(opponent="random")
    env.reset(seed=0)
    n = 1000
    counts = play_random_agent(env, np.random.default_rng(0), episodes=n)
    assert abs(counts["win"] / n - 0.424) < 0.05 and abs(counts["draw"] / n - 0.251) < 0.05
    env = ConnectFourEnv(opponent="heuristic")
    env.reset(seed=0)
    assert play_random_agent(env, np.random.default_rng(0), episodes=300)["win"] < 0.15 * 300


@pytest.mark.parametrize("opponent", ["random", "solver"])
def test_expert_never_loses_from_the_start(opponent):
    env = ConnectFourEnv(opponent=opponent, first_player="agent")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(20):
        env.reset()
        terminated = False
        while not terminated:
            action = env.expert_action(rng)
            assert action in env.legal_actions()
            _, reward, terminated, _, info = env.step(action)
        rewards.append(reward)
    # The start is a draw: the expert draws against perfect play and beats random play.
    if opponent == "solver":
        assert set(rewards) == {0.0}
    else:
        assert min(rewards) >= 0 and rewards.count(1.0) > 15


@pytest.mark.parametrize("rows, cols", [(4, 5), (6, 7)])  # the solver's board, and the heuristic's
def test_expert_takes_immediate_wins(rows, cols):
    env = ConnectFourEnv(rows=rows, cols=cols, opponent="random")
    g = game(rows, cols, 4)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    wins_seen = 0
    for _ in range(20):
        obs, info = env.reset()
        terminated = False
        while not terminated:
            winning = g.winning_columns(board_of(obs), AGENT)
            action = env.expert_action(rng)
            if winning:
                wins_seen += 1
                assert int(action) - 1 in winning
            obs, reward, terminated, _, info = env.step(action)
    assert wins_seen > 10


def test_legal_actions_match_info():
    env = ConnectFourEnv()
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    terminated = False
    while not terminated:
        assert env.legal_actions() == [str(col) for col in info["legal_moves"]]
        _, _, terminated, _, info = env.step(env.demo_action(rng, expert_prob=0.5))


# clone(): tests/test_envs.py covers ConnectFourEnv with TicTacToeEnv.


def test_opponent_first_drops_one_o():
    obs, info = ConnectFourEnv(first_player="opponent").reset(seed=0)
    rows = obs.split()
    assert rows[3].count("O") == 1 and "".join(rows[:3]) == "." * 15 and "X" not in obs
    assert info["legal_moves"] == (1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(opponent="perfect"), r"'perfect'.*'random', 'heuristic', 'solver'"),
        (dict(first_player="me"), r"'me'.*'agent', 'opponent', 'random'"),
        (dict(invalid_penalty=-1.0), r"-1\.0.*>= 0"),
        (dict(render_mode="human"), r"'human'.*None, 'ansi'"),
        (dict(rows=0), r"rows=0.*>= 1"),
        (dict(cols=10), r"cols=10.*\[1, 9\]"),
        (dict(connect=1), r"connect=1.*\[2, 5\]"),
        (dict(connect=6), r"connect=6.*\[2, 5\]"),
        (dict(rows=5, cols=5, opponent="solver"), r"'solver'.*5x5.*20 cells.*'random', 'heur"),
    ],
)
def test_bad_arguments_raise(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        ConnectFourEnv(**kwargs)


def test_expert_is_deterministic_and_prefers_the_centre():
    """One move per board (a policy can imitate it exactly): the empty 4x5 board's optimal moves are
    the middle three columns, and the expert picks the centre one whatever the rng."""
    env = ConnectFourEnv()
    env.reset(seed=0)
    assert {env.expert_action(np.random.default_rng(s)) for s in range(10)} == {"3"}
    rng = np.random.default_rng(1)
    for seed in range(5):
        env.reset(seed=seed)
        terminated = False
        while not terminated:
            action = env.expert_action(rng)
            assert all(env.expert_action(np.random.default_rng(s)) == action for s in range(3))
            _, _, terminated, _, _ = env.step(action)
