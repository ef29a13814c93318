import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import chess
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers the ids)
from envs import chess_common as cc
from envs.chess_endgame import ChessEndgameEnv
from envs.chess_game import ChessEnv

HAS_STOCKFISH = cc.stockfish_available(cc.STOCKFISH_PATH)
HAS_TABLES = ChessEndgameEnv().tablebase_available
needs_stockfish = pytest.mark.skipif(
    not HAS_STOCKFISH, reason="stockfish not installed: run make system-deps"
)
needs_tables = pytest.mark.skipif(
    not HAS_TABLES, reason="Gaviota tablebases not installed: run make system-deps"
)

MATE_IN_ONE = "k7/8/1K6/8/8/8/7Q/8 w - - 0 1"  # only Qh8# (h2h8) mates
# Castling both ways, promotions with and without capture, en passant (d5xe6).
SPECIAL_MOVES = "r3k2r/pPpp1ppp/8/3Pp3/8/8/8/R3K2R w KQkq e6 0 1"


def stockfish_processes(parent_pid: int | None = None) -> dict[int, str]:
    """Live (not zombie) stockfish processes as {pid: state}; only `parent_pid`'s if given."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if comm == "stockfish" and state != "Z" and parent_pid in (None, int(ppid)):
            found[int(stat.parent.name)] = state
    return found


def rollout(env, seed, agent_seed, steps):
    """The transcript of `steps` steps of a random legal agent, resetting at episode ends."""
    rng = np.random.default_rng(agent_seed)
    transcript = [env.reset(seed=seed)]
    for _ in range(steps):
        legal = env.legal_actions()
        step = env.step(legal[rng.integers(len(legal))])
        transcript.append(step)
        if step[2] or step[3]:
            transcript.append(env.reset())
    return transcript


@pytest.mark.parametrize("env_id", ["ChessEndgame-v0", "Chess-v0"])
def test_check_env_with_every_option(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(
            env_id, agent_color="random", move_format="san", show_fen=True, show_legal_moves=True,
            compact=True,
        )
        check_env(env.unwrapped)
        env.reset(seed=0)
        env.step(env.action_space.sample())


@needs_stockfish
@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("ChessEndgame-v0", dict(defender="stockfish", agent_color="black")),
        # Black: Stockfish moves inside reset, which must be reproducible under seed.
        ("Chess-v0", dict(opponent="stockfish", agent_color="black", skill_level=20, depth=2)),
    ],
)
def test_check_env_with_stockfish(env_id, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id, **kwargs)
        check_env(env.unwrapped)
        env.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda: ChessEndgameEnv(material="KRK", agent_color="random"),
        lambda: ChessEnv(agent_color="random", move_format="san"),
    ],
)
def test_deterministic_under_seed(make):
    assert rollout(make(), seed=7, agent_seed=1, steps=60) == rollout(make(), 7, 1, 60)
    assert rollout(make(), seed=7, agent_seed=1, steps=60) != rollout(make(), 8, 1, 60)


ENVS = {"endgame": ChessEndgameEnv(), "game": ChessEnv(move_format="san", invalid_penalty=2.0)}


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(ENVS)),
    st.one_of(st.text(), st.text(alphabet="abcdefgh12345678KQRBNqrbnxO-=+# \n", max_size=8)),
)
def test_any_string_action_is_handled(name, action):
    env = ENVS[name]
    env.reset(seed=0)
    board = env._board.copy()
    legal = {m.uci() for m in board.legal_moves} | {board.san(m) for m in board.legal_moves}
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs)
    if action.strip() in legal:  # python-chess also accepts variants such as "e2-e4", "Nf3+"
        assert not info["invalid_action"]
    if info["invalid_action"]:
        assert (reward, terminated, truncated) == (-env.invalid_penalty, True, False)
        assert not info["success"] and env._board == board


@pytest.mark.parametrize(
    "action", ["", "0000", "--", "e2e5", "e7e5", "Ke2", "O-O", "e2e4q", "E2E4", "e2e4" * 3]
)
def test_invalid_moves_end_the_episode(action):
    env = ChessEnv()
    obs, _ = env.reset(seed=0)
    info = dict(invalid_action=True, success=False, move_limit=False)
    assert env.step(action) == (obs, -1.0, True, False, info)


SPECIAL = {
    "uci": {"e1g1", "e1c1", "b7a8q", "b7b8n", "d5e6"},
    "san": {"O-O", "O-O-O", "bxa8=Q+", "b8=N", "dxe6"},
}


@pytest.mark.parametrize("move_format", cc.MOVE_FORMATS)
def test_legal_moves_are_accepted_in_both_formats(move_format):
    env = ChessEnv(fen=SPECIAL_MOVES, move_format=move_format)
    env.reset(seed=0)
    board = env._board
    actions = env.legal_actions()
    assert SPECIAL[move_format] <= set(actions)
    for move, action in zip(board.legal_moves, actions, strict=True):
        assert action == (board.san(move) if move_format == "san" else move.uci())
        results = [env.clone().step(text) for text in (move.uci(), f" {board.san(move)}\n")]
        assert results[0] == results[1] and not results[0][4]["invalid_action"]


def test_observation_layout():
    env = ChessEnv(show_fen=True, show_legal_moves=True)
    obs, _ = env.reset(seed=0)
    lines = obs.splitlines()
    assert lines[0] == "White to move (uci), moves left: 100"
    assert lines[1:9] == str(chess.Board()).splitlines()
    assert lines[9] == f"FEN: {chess.STARTING_FEN}"
    assert lines[10].split()[1:] == env.legal_actions() and len(lines) == 11


def test_compact_observation():
    env = ChessEnv(compact=True)
    obs, _ = env.reset(seed=0)
    lines = obs.splitlines()
    assert lines[0] == "w 100" and len(lines) == 9
    assert lines[1:] == [row.replace(" ", "") for row in str(chess.Board()).splitlines()]
    assert env.observation_space.contains(obs)


def demonstrators():
    return [
        pytest.param(dict(), id="tablebase", marks=needs_tables),
        pytest.param(dict(tablebase_dir=None), id="stockfish", marks=needs_stockfish),
        pytest.param(dict(tablebase_dir=None, stockfish_path=None), id="greedy"),
    ]


@pytest.mark.parametrize("kwargs", demonstrators())
def test_expert_mates_in_one(kwargs):
    env = ChessEndgameEnv(**kwargs)
    env.reset(seed=0, options=dict(fen=MATE_IN_ONE))
    rng = np.random.default_rng(0)
    for _ in range(5):
        move = env.expert_action(rng)
        assert move == "h2h8"
        _, reward, terminated, truncated, info = env.clone().step(move)
        assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    env.close()


@needs_tables
@pytest.mark.parametrize("material", ["KQK", "KRK"])
def test_tablebase_expert_mates_on_schedule(material):
    env = ChessEndgameEnv(material=material, agent_color="random")
    rng = np.random.default_rng(0)
    for episode in range(10):
        _, info = env.reset(seed=episode)
        assert info["value"] == 1.0 and 1 <= info["dtm"]
        terminated = False
        while not terminated:
            dtm = info["dtm"]
            _, reward, terminated, truncated, info = env.step(env.expert_action(rng))
            assert not truncated and info["value"] == 1.0
            assert info["dtm"] <= dtm - 1  # a random defender may shorten the mate
        assert reward == 1.0 and info["success"] and info["dtm"] == 0


@needs_tables
def test_tablebase_info_ground_truth():
    env = ChessEndgameEnv(max_moves=1)
    _, info = env.reset(seed=0, options=dict(fen=MATE_IN_ONE))
    assert (info["dtm"], info["value"]) == (1, 1.0)
    _, reward, terminated, truncated, info = env.clone().step("h2a2")  # check, not mate: out of moves
    assert (reward, terminated, truncated, info["move_limit"], info["value"]) == (0.0, True, False, True, 0.0)
    _, info = env.reset(seed=0, options=dict(fen="k7/8/8/8/8/8/8/KQ6 w - - 0 1"))
    assert info["dtm"] > 1 and info["value"] == 0.0  # a win, but not within one move
    # A stalemating move draws: the tablebase says so, and so does the env.
    env = ChessEndgameEnv()
    env.reset(seed=0, options=dict(fen="k7/8/1K6/8/8/8/8/2Q5 w - - 0 1"))
    _, reward, terminated, _, info = env.step("c1c7")
    assert (reward, terminated, info["value"], info["dtm"]) == (0.0, True, 0.0, 0)


@needs_tables
@pytest.mark.parametrize("material", ["KQK", "KRK"])
def test_max_start_dtm_starts_near_mate_and_stays_seeded(material):
    env = gym.make("ChessEndgame-v0", material=material, agent_color="random", max_start_dtm=2).unwrapped
    check_env(env)
    starts = [env.reset(seed=seed) for seed in range(30)]
    assert {info["dtm"] for _, info in starts} == {1, 2}  # both occur, nothing further away
    assert [obs for obs, _ in starts] == [env.reset(seed=seed)[0] for seed in range(30)]
    with pytest.raises(ValueError, match="max_start_dtm=2 needs the Gaviota tables"):
        ChessEndgameEnv(material=material, max_start_dtm=2, tablebase_dir=None)


def test_tablebase_absent_omits_info():
    env = ChessEndgameEnv(tablebase_dir="/nonexistent")
    _, info = env.reset(seed=0)
    assert not env.tablebase_available and "make system-deps" in env.tablebase_status
    assert info == dict(invalid_action=False, success=False, move_limit=False)


# The move limit is shown ("moves left: N"), so it is part of the task: reaching it terminates
# (no bootstrap), it never truncates (DESIGN.md, "Terminated vs truncated"; issue 17).
SHUFFLES = {
    # Knight out and back: nothing can end a game in two moves this way.
    "Chess-v0": ({}, ["g1f3", "f3g1"]),
    # King to and fro, the queen far from the lone king: no mate, stalemate or capture.
    "ChessEndgame-v0": ({"options": {"fen": "7k/8/8/8/8/8/8/KQ6 w - - 0 1"}}, ["a1a2", "a2a1"]),
}


@pytest.mark.parametrize("env_id", sorted(SHUFFLES))
def test_visible_move_limit_terminates(env_id):
    reset_kwargs, moves = SHUFFLES[env_id]
    env = gym.make(env_id, max_moves=len(moves))
    obs, info = env.reset(seed=0, **reset_kwargs)
    assert obs.splitlines()[0].endswith(f"moves left: {len(moves)}") and info["move_limit"] is False
    for i, move in enumerate(moves, start=1):
        obs, reward, terminated, truncated, info = env.step(move)
        assert obs.splitlines()[0].endswith(f"moves left: {len(moves) - i}")
        assert cc.game_outcome(env.unwrapped._board) is None
        last = i == len(moves)
        assert (terminated, truncated, info["move_limit"]) == (last, False, last)
        assert type(terminated) is bool and type(truncated) is bool
    assert (reward, info["success"], info["invalid_action"]) == (0.0, False, False)
    assert info.get("value", 0.0) == 0.0  # out of moves: no win left (with the tables)
    env.close()


def test_move_limit_flag_only_on_running_out():
    """Every other ending (mate, draw, lost queen) leaves move_limit False; the limit sets it."""
    env = ChessEndgameEnv(max_moves=3, tablebase_dir=None, stockfish_path=None)
    env.reset(seed=0)
    rng, endings = np.random.default_rng(0), set()
    for _ in range(60):
        env.reset()
        while True:
            legal = env.legal_actions()
            _, _, terminated, truncated, info = env.step(legal[rng.integers(len(legal))])
            assert truncated is False
            if terminated:
                break
        over = cc.game_outcome(env.board) is not None
        assert info["move_limit"] is (not over)
        endings.add(info["move_limit"])
    assert endings == {True, False}  # both kinds of ending occurred


def test_hidden_time_limit_still_truncates():
    """A limit the agent cannot see (gymnasium's TimeLimit) truncates, before the visible one."""
    _, moves = SHUFFLES["Chess-v0"]
    env = gym.wrappers.TimeLimit(ChessEnv(max_moves=100), max_episode_steps=len(moves))
    env.reset(seed=0)
    for i, move in enumerate(moves, start=1):
        obs, _, terminated, truncated, info = env.step(move)
        last = i == len(moves)
        assert (terminated, truncated, info["move_limit"]) == (False, last, False)
    assert obs.splitlines()[0].endswith(f"moves left: {100 - len(moves)}")
    # Through gym.make's max_episode_steps too, for the endgame.
    reset_kwargs, moves = SHUFFLES["ChessEndgame-v0"]
    env = gym.make("ChessEndgame-v0", max_episode_steps=len(moves))
    env.reset(seed=0, **reset_kwargs)
    for i, move in enumerate(moves, start=1):
        _, _, terminated, truncated, info = env.step(move)
        assert (terminated, truncated, info["move_limit"]) == (False, i == len(moves), False)
    env.close()


def test_random_legal_mate_rate_is_low():
    env = ChessEndgameEnv(material="KQK", defender="random", tablebase_dir=None)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n, mates = 200, 0
    for _ in range(n):
        env.reset()
        done = False
        while not done:
            legal = env.legal_actions()
            _, reward, terminated, truncated, _ = env.step(legal[rng.integers(len(legal))])
            done = terminated or truncated
        mates += reward == 1.0
    print(f"random-legal KQK mate rate vs random defender: {mates / n:.2f} over {n} episodes")
    assert mates / n < 0.1  # about 0.015 over 1000 episodes


def test_material_reward_and_results():
    env = ChessEnv(fen="4k3/8/8/3q4/8/8/8/3QK3 w - - 0 1", material_reward=0.1)
    env.reset(seed=0)
    assert env.step("Qxd5")[1] == pytest.approx(0.9)
    env = ChessEnv(fen=MATE_IN_ONE, material_reward=0.1)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("Qh8#")
    assert (reward, terminated, info["success"]) == (1.0, True, True)


@pytest.mark.parametrize("coefficient", [0.0, 0.1])
def test_endgame_material_reward_prices_a_lost_queen(coefficient):
    env = ChessEndgameEnv(material_reward=coefficient)
    env.reset(seed=0, options={"fen": "2k5/8/8/8/8/8/8/K2Q4 w - - 0 1"})
    _, reward, terminated, _, info = env.step("d1d7")  # next to the king, undefended: taken
    assert (reward, terminated, info["success"]) == (pytest.approx(-9 * coefficient), True, False)
    env.reset(seed=0, options={"fen": "k7/8/1K6/8/8/8/8/3Q4 w - - 0 1"})
    assert env.step("d1d8")[1] == 1.0  # mate: no material changed hands


def tablebase_potential(env, dtm):
    return env.tablebase_reward * (1 - dtm / 11)  # KQK's longest mate is 10 moves


@needs_tables
def test_tablebase_reward_pays_progress_and_takes_back_a_hung_queen():
    env = ChessEndgameEnv(tablebase_reward=0.5)
    _, info = env.reset(seed=0, options={"fen": "k7/8/1K6/8/8/8/8/3Q4 w - - 0 1"})
    assert info["dtm"] == 1
    assert env.step("d1d8")[1] == pytest.approx(1 + 0.5 / 11)  # mate: +1, and the potential 0.5 * 10/11 -> 0.5
    _, info = env.reset(seed=0, options={"fen": "2k5/8/8/8/8/8/8/K2Q4 w - - 0 1"})
    _, reward, terminated, _, _ = env.step("d1d7")  # taken: the win and its potential are gone
    assert terminated and reward == pytest.approx(-tablebase_potential(env, info["dtm"]))


@needs_tables
@pytest.mark.parametrize("seed", range(6))
def test_tablebase_reward_adds_up_to_the_mate_bonus_minus_the_start_potential(seed):
    """Potential-based: a whole game's shaping telescopes, whatever the moves were."""
    env = ChessEndgameEnv(tablebase_reward=1.0, max_moves=12)
    _, info = env.reset(seed=seed)
    start_potential = tablebase_potential(env, info["dtm"])
    total, rng, done = 0.0, np.random.default_rng(seed), False
    while not done:
        legal = env.legal_actions()
        _, reward, terminated, truncated, info = env.step(legal[rng.integers(len(legal))])
        total, done = total + reward, terminated or truncated
    assert total == pytest.approx((1 + 1.0) * info["success"] - start_potential)


def test_tablebase_reward_needs_the_tables():
    with pytest.raises(ValueError, match="tablebase_reward=0.1 needs the Gaviota tables"):
        ChessEndgameEnv(tablebase_reward=0.1, tablebase_dir=None)


@needs_stockfish
def test_stockfish_opponent_mates_and_demonstrates():
    back_rank = "4r1k1/5ppp/8/8/8/8/P4PPP/6K1 w - - 0 1"
    env = ChessEnv(opponent="stockfish", fen=back_rank, skill_level=20, depth=3)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("a3")  # Re1#
    assert (reward, terminated, info["success"]) == (-1.0, True, False)
    env.reset(seed=0)
    assert env.expert_action(np.random.default_rng(0)) in env.legal_actions()
    env.close()


@needs_stockfish
@needs_tables
def test_tablebase_expert_beats_stockfish_defender():
    env = ChessEndgameEnv(material="KRK", defender="stockfish", depth=6)
    _, info = env.reset(seed=5)  # mate in 13
    rng = np.random.default_rng(0)
    dtm, moves, terminated = info["dtm"], 0, False
    while not terminated:
        _, reward, terminated, truncated, _ = env.step(env.expert_action(rng))
        moves += 1
        assert not truncated
    assert reward == 1.0 and moves <= dtm
    print(f"tablebase expert mated Stockfish in {moves} moves (tablebase DTM {dtm})")
    env.close()


def test_missing_stockfish_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="/no/stockfish.*make system-deps"):
        ChessEnv(opponent="stockfish", stockfish_path="/no/stockfish")
    with pytest.raises(FileNotFoundError, match="/no/stockfish.*make system-deps"):
        ChessEndgameEnv(defender="stockfish", stockfish_path="/no/stockfish")


@needs_stockfish
def test_close_and_clone_manage_engine_processes():
    assert not stockfish_processes(os.getpid())
    env = ChessEnv(opponent="stockfish", depth=1)
    env.reset(seed=0)
    assert not stockfish_processes(os.getpid())  # started lazily
    env.step("e2e4")
    clone = env.clone()
    assert len(stockfish_processes(os.getpid())) == 1  # the clone has not started its own
    assert clone.step("d2d4")[4]["invalid_action"] is False
    assert len(stockfish_processes(os.getpid())) == 2
    env.close()
    clone.close()
    assert not stockfish_processes(os.getpid())


CRASHING_TRAINER = """
import os, signal, sys, time
from envs.chess_game import ChessEnv
env = ChessEnv(opponent="stockfish", depth=1)
env.reset(seed=0)
env.step("e2e4")
print(env._stockfish._engine.transport.get_pid(), flush=True)
# Like a forked data-loader worker, a child inherits the engine's pipes: the engine sees no
# end-of-file on its stdin when the trainer dies, so only the parent-death signal stops it.
worker = os.fork()
if worker == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(1, 2)
    time.sleep(60)
    os._exit(0)
print(worker, flush=True)
if sys.argv[1] == "exit":
    os._exit(1)
os.kill(os.getpid(), signal.SIGKILL)
"""


@needs_stockfish
@pytest.mark.parametrize("death", ["exit", "sigkill"])
def test_no_engine_survives_a_crash(death):
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_TRAINER, death],
        cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=60,
    )
    engine_pid, worker_pid = map(int, result.stdout.split())
    try:
        assert result.returncode != 0
        deadline = time.monotonic() + 5
        while engine_pid in stockfish_processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine_pid not in stockfish_processes()
    finally:
        os.kill(worker_pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "make, bad",
    [
        (lambda: ChessEndgameEnv(material="KBNK"), "KBNK"),
        (lambda: ChessEndgameEnv(defender="minimax"), "minimax"),
        (lambda: ChessEndgameEnv(max_moves=0), "max_moves=0"),
        (lambda: ChessEndgameEnv(move_format="lan"), "lan"),
        (lambda: ChessEndgameEnv(invalid_penalty=-1.0), "-1.0"),
        (lambda: ChessEndgameEnv(material_reward=-0.1), "-0.1"),
        (lambda: ChessEndgameEnv(tablebase_reward=-0.1), "-0.1"),
        (lambda: ChessEndgameEnv(max_start_dtm=0), "max_start_dtm=0"),
        (lambda: ChessEndgameEnv().reset(options=dict(fen=chess.STARTING_FEN)), "fen="),
        (lambda: ChessEnv(opponent="human"), "human"),
        (lambda: ChessEnv(agent_color="red"), "red"),
        (lambda: ChessEnv(skill_level=21), "21"),
        (lambda: ChessEnv(depth=None, movetime=None), "depth=None"),
        (lambda: ChessEnv(movetime=-1.0), "-1.0"),
        (lambda: ChessEnv(fen="8/8/8/8/8/8/8/8 w - - 0 1"), "fen="),
        (lambda: ChessEnv(material_reward=float("nan")), "nan"),
        (lambda: ChessEnv(render_mode="human"), "human"),
    ],
)
def test_bad_arguments_raise(make, bad):
    with pytest.raises(ValueError, match=bad):
        make()
