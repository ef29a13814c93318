import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.connect_four import ConnectFourEnv
from envs.tictactoe import EMPTY_BOARD, TicTacToeEnv, solve
from tests.env_checks import check_env_without_warnings

EMPTY_BOARD_OBS = "123\n456\n789\n"


def play_random_agent(env, rng, episodes):
    """Counts of (wins, draws, losses, invalid moves) for a uniformly random legal agent."""
    counts = dict(win=0, draw=0, loss=0, invalid=0)
    for _ in range(episodes):
        _, info = env.reset()
        terminated = False
        while not terminated:
            moves = info["legal_moves"]
            action = str(moves[rng.integers(len(moves))])
            _, reward, terminated, truncated, info = env.step(action)
            assert not truncated
        assert info["success"] == (reward == 1) and info["value"] == reward
        outcome = "invalid" if info["invalid_action"] else {1: "win", 0: "draw", -1: "loss"}[reward]
        counts[outcome] += 1
    return counts


def rollout(env, seed, agent_seed, steps):
    """The transcript of `steps` steps of a random legal agent, resetting at episode ends."""
    rng = np.random.default_rng(agent_seed)
    obs, info = env.reset(seed=seed)
    transcript = [(obs, info)]
    for _ in range(steps):
        moves = info["legal_moves"]
        obs, reward, terminated, _, info = env.step(str(moves[rng.integers(len(moves))]))
        transcript.append((obs, reward, terminated, info))
        if terminated:
            obs, info = env.reset()
            transcript.append((obs, info))
    return transcript


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_check_env(env_id):
    check_env_without_warnings(env_id)


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(envs)
    assert set(envs.ENV_IDS) <= set(gym.registry)


def test_initial_observation_and_info():
    obs, info = TicTacToeEnv(opponent="minimax").reset(seed=0)
    assert obs == EMPTY_BOARD_OBS
    assert info == dict(
        invalid_action=False, success=False, value=0.0, legal_moves=tuple(range(1, 10))
    )


def test_deterministic_under_seed():
    def run(seed):
        env = TicTacToeEnv(opponent="random", first_player="random")
        return rollout(env, seed=seed, agent_seed=1, steps=200)

    assert run(seed=7) == run(seed=7)
    assert run(seed=7) != run(seed=8)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_string_action_is_handled(action):
    env = TicTacToeEnv()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs)
    valid = action.strip() in set("123456789")
    assert info["invalid_action"] == (not valid)
    if not valid:
        assert (reward, terminated, truncated) == (-2.0, True, False)


@pytest.mark.parametrize(
    "action", ["", " ", "0", "10", "a", " 5x", "5 5", "５", "5" * 10_000, "\x00"]
)
def test_invalid_action_ends_episode_with_penalty(action):
    env = TicTacToeEnv(invalid_penalty=2.5)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert (obs, reward, terminated, truncated) == (EMPTY_BOARD_OBS, -2.5, True, False)
    assert info["invalid_action"] and not info["success"] and info["value"] == -1.0


def test_whitespace_around_a_valid_move_is_accepted():
    env = TicTacToeEnv()
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step(" 5\n")
    assert obs[5] == "X" and obs.count("O") == 1
    assert (reward, terminated, info["invalid_action"]) == (0.0, False, False)


def test_non_string_action_is_a_type_error():
    env = TicTacToeEnv()
    env.reset(seed=0)
    with pytest.raises(TypeError):
        env.step(5)


def test_taken_cell_is_invalid():
    env = TicTacToeEnv()
    env.reset(seed=0)
    obs, *_ = env.step("5")
    taken_by_opponent = str(obs.replace("\n", "").index("O") + 1)
    for taken in ["5", taken_by_opponent]:
        clone = env.clone()
        _, reward, terminated, _, info = clone.step(taken)
        assert (reward, terminated, info["invalid_action"]) == (-2.0, True, True)


def test_solver_known_positions():
    assert solve(EMPTY_BOARD) == (0, tuple(range(1, 10)))
    # X to move can complete the top row at 3.
    value, moves = solve("XX3OO6789", "X")
    assert value == 1 and 3 in moves
    # X to move faces two O threats (cells 2 and 4) and can block only one.
    assert solve("O2O4X6O8X", "X")[0] == -1
    # After a corner opening, only the centre saves O.
    assert solve("X23456789", "O") == (0, (5,))
    # A finished board: the result for the side to move, no moves.
    assert solve("XXXOO6789", "O") == (-1, ())


def test_minimax_opponent_never_loses():
    env = TicTacToeEnv(opponent="minimax", first_player="random")
    env.reset(seed=0)
    counts = play_random_agent(env, np.random.default_rng(0), episodes=200)
    assert counts["win"] == 0 and counts["invalid"] == 0


def test_epsilon_opponent_sometimes_loses():
    env = TicTacToeEnv(opponent="epsilon", epsilon=1.0)
    env.reset(seed=0)
    assert play_random_agent(env, np.random.default_rng(0), episodes=200)["win"] > 0


def test_random_vs_random_statistics():
    # Known exact values for a random first player: wins 0.585, draws 0.127.
    env = TicTacToeEnv(opponent="random", first_player="agent")
    env.reset(seed=0)
    n = 5000
    counts = play_random_agent(env, np.random.default_rng(0), episodes=n)
    assert abs(counts["win"] / n - 0.585) < 0.05
    assert abs(counts["draw"] / n - 0.127) < 0.05


def test_info_value_is_ground_truth_against_minimax():
    env = TicTacToeEnv(opponent="minimax")
    # X in a corner, minimax O must answer in the centre: still a draw.
    env.reset(seed=0)
    obs, _, _, _, info = env.step("1")
    assert obs[5] == "O" and info["value"] == 0.0
    # Against perfect play the agent's value can only fall, and it ends at the result.
    rng = np.random.default_rng(0)
    drops = 0
    for _ in range(100):
        _, info = env.reset()
        values, terminated = [info["value"]], False
        while not terminated:
            moves = info["legal_moves"]
            _, reward, terminated, _, info = env.step(str(moves[rng.integers(len(moves))]))
            values.append(info["value"])
        assert values == sorted(values, reverse=True) and values[-1] == reward
        drops += values[0] > values[-1]
    assert drops > 0


CLONEABLE = [(TicTacToeEnv, "5"), (ConnectFourEnv, "3")]  # (env class, a first move)


@pytest.mark.parametrize("make, first", CLONEABLE)
def test_clone_continues_identically_and_independently(make, first):
    env = make(opponent="random", render_mode="ansi")
    env.reset(seed=3)
    *_, info = env.step(first)
    action = str(info["legal_moves"][0])
    before = env.render()
    clone = env.clone()
    from_clone = clone.step(action)
    assert env.render() == before  # stepping the clone leaves the original alone
    assert env.step(action) == from_clone


@pytest.mark.parametrize("make, first", CLONEABLE)
def test_clone_with_seed_reseeds(make, first):
    env = make(opponent="random")
    env.reset(seed=3)
    *_, info = env.step(first)
    action = str(info["legal_moves"][0])

    def next_obs(clone):
        return clone.step(action)[0]

    assert next_obs(env.clone(seed=1)) == next_obs(env.clone(seed=1))
    assert len({next_obs(env.clone(seed=s)) for s in range(20)}) > 1


def test_opponent_first_places_one_o():
    obs, info = TicTacToeEnv(first_player="opponent").reset(seed=0)
    assert obs.count("O") == 1 and "X" not in obs
    assert len(info["legal_moves"]) == 8


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(opponent="perfect"), "perfect"),
        (dict(first_player="me"), "me"),
        (dict(epsilon=1.5), "1.5"),
        (dict(invalid_penalty=-1.0), "-1.0"),
        (dict(render_mode="human"), "human"),
    ],
)
def test_bad_arguments_raise(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        TicTacToeEnv(**kwargs)
