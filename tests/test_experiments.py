"""Smoke tests of the scripts under experiments/."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_random_legal_baseline_matches_the_known_rate():
    # A random legal agent moving first wins ~58.5% of tic-tac-toe games against a random opponent.
    proc = subprocess.run([sys.executable, "experiments/random_legal_baseline.py", "--env", "TicTacToe-v0",
                           "--episodes", "400"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    lo, hi = result["ci95"]
    assert result["episodes"] == 400 and lo < 0.585 < hi and lo <= result["success_rate"] <= hi


def test_context_probe_runs_and_cuts_one_sample_per_move():
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        from context_probe import latest_only
    finally:
        sys.path.pop(0)
    from rl_vf.engine import Episode

    bos = 0
    episode = Episode(seed=0)
    for observation, action in (([bos, 5, 6], [9]), ([7, 8], [10, 1])):
        episode.extend(observation, is_action=False)
        episode.extend(action, is_action=True)
    moves = latest_only(episode, bos)
    assert [(m.tokens, m.action_mask) for m in moves] == [([0, 5, 6, 9], [0, 0, 0, 1]),
                                                          ([0, 7, 8, 10, 1], [0, 0, 0, 1, 1])]
    proc = subprocess.run([sys.executable, "experiments/context_probe.py", "--env", "TicTacToe-v0", "--steps", "2",
                           "--demos", "20", "--moves-per-step", "32", "--window", "12"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert [row["variant"] for row in result["final"]] == ["full", "window", "latest"]
    assert all(0 < row["nll"] < 10 and 0 <= row["accuracy"] <= 1 for row in result["final"])


def test_connect_four_mistakes_sorts_moves_against_the_solver(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        from connect_four_mistakes import board_from_observation, mistakes
    finally:
        sys.path.pop(0)
    from envs.connect_four import game
    from rl_vf.config import TrainConfig
    from rl_vf.actor import open_env, policy_for_env

    g = game(4, 5, 4)
    three_up = ".....\nX....\nX....\nX.OO.\n12345\n"  # X wins in column 1; O threatens nothing yet
    assert board_from_observation(three_up, g)[:4] == "XXX." and board_from_observation(three_up, g)[12] == "O"
    must_block = ".....\n.....\n.....\nXOOO.\n12345\n"  # O wins in column 5 unless X plays there
    counts = mistakes([(three_up, "1"), (three_up, "2"), (must_block, "5"), (must_block, "9")], g)
    assert counts == {"win": 2, "win_missed": 1, "block": 2, "block_missed": 1}
    empty = ".....\n" * 4 + "12345\n"  # only the three middle columns keep the draw
    assert mistakes([(empty, "3"), (empty, "1")], g) == {"quiet": 2, "quiet_missed": 1}

    # The script end to end, on an untrained policy saved as a checkpoint.
    cfg = TrainConfig(env="ConnectFour-v0")
    policy, tokenizer = policy_for_env("tiny", cfg, open_env(cfg.env, {}))
    policy.save_pretrained(str(tmp_path / "ck"), tokenizer)
    proc = subprocess.run([sys.executable, "experiments/connect_four_mistakes.py", "--checkpoint", str(tmp_path / "ck"),
                           "--episodes", "8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["quiet"] + result.get("win", 0) + result.get("block", 0) >= 8
    assert 0 <= result["quiet_missed_rate"] <= 1


def test_chess_endgame_mistakes_replays_games_and_sorts_their_endings(tmp_path):
    import chess
    import gymnasium as gym
    import numpy as np
    import pytest

    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        from chess_endgame_mistakes import ending, has_mate_in_one, replay
    finally:
        sys.path.pop(0)
    from rl_vf.config import make_config
    from rl_vf.actor import open_env, policy_for_env

    assert has_mate_in_one(chess.Board("k7/8/1K6/8/8/8/7Q/8 w - - 0 1"))  # Qh8#
    assert not has_mate_in_one(chess.Board("k7/8/8/8/8/8/8/KQ6 w - - 0 1"))
    stalemate = chess.Board("k7/2Q5/1K6/8/8/8/8/8 b - - 0 1")
    assert ending(stalemate, {"invalid_action": False, "success": False, "move_limit": False}) == "stalemate"
    assert ending(stalemate, {"invalid_action": False, "success": False, "move_limit": True}) == "out_of_moves"

    # A game of the env's own expert, replayed from its moves: it mates, and never misses a mate in one.
    env = gym.make("ChessEndgame-v0")
    if not env.unwrapped.tablebase_available:
        pytest.skip(f"Gaviota tables needed for the expert: {env.unwrapped.tablebase_status}")
    rng, moves = np.random.default_rng(0), []
    env.reset(seed=5)
    while True:
        moves.append(env.unwrapped.expert_action(rng))
        _, _, terminated, truncated, _ = env.step(moves[-1])
        if terminated or truncated:
            break
    counts = replay(env, 5, moves)
    assert counts["end_mate"] == 1 and counts["mate_in_one"] >= 1 and counts["mate_in_one_missed"] == 0
    # Stopping one move short is an error, not a silent miscount.
    with pytest.raises(ValueError, match="did not end"):
        replay(env, 5, moves[:-1])

    # The script end to end, on an untrained policy saved as a checkpoint.
    cfg = make_config({"env": "ChessEndgame-v0", "env_kwargs": {"compact": True, "max_moves": 4}})
    policy, tokenizer = policy_for_env("tiny", cfg, open_env(cfg.env, cfg.env_kwargs))
    policy.save_pretrained(str(tmp_path / "run" / "checkpoints" / "final"), tokenizer)
    (tmp_path / "run" / "config.yaml").write_text(json.dumps(cfg.to_dict()))  # JSON is YAML
    proc = subprocess.run([sys.executable, "experiments/chess_endgame_mistakes.py", "--checkpoint",
                           str(tmp_path / "run"), "--episodes", "6"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert sum(v for k, v in result.items() if k.startswith("end_")) == 6
    assert result["end_out_of_moves"] >= 1 and 0 <= result["mate_in_one_missed_rate"] <= 1


def test_hung_queen_finds_hanging_moves_and_reads_the_critic_inside_them(tmp_path):
    import chess

    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    try:
        from hung_queen import action_spans, hangs_queen
    finally:
        sys.path.pop(0)
    from rl_vf.config import make_config
    from rl_vf.actor import open_env, policy_for_env

    board = chess.Board("4k3/8/8/8/8/8/8/3QK3 w - - 0 1")
    assert hangs_queen(board, chess.Move.from_uci("d1d7"))  # next to the king, too far for ours to defend
    assert not hangs_queen(board, chess.Move.from_uci("d1d2"))  # defended by our king
    assert not hangs_queen(board, chess.Move.from_uci("d1a4"))  # out of the king's reach
    assert action_spans([0, 1, 1, 0, 0, 1, 0, 1]) == [(1, 2), (5, 5), (7, 7)]

    cfg = make_config({"env": "ChessEndgame-v0", "env_kwargs": {"compact": True, "max_moves": 6},
                       "constrain_actions": "legal"})
    policy, tokenizer = policy_for_env("tiny", cfg, open_env(cfg.env, cfg.env_kwargs))
    policy.save_pretrained(str(tmp_path / "run" / "checkpoints" / "final"), tokenizer)
    (tmp_path / "run" / "config.yaml").write_text(json.dumps(cfg.to_dict()))
    proc = subprocess.run([sys.executable, "experiments/hung_queen.py", "--checkpoint", str(tmp_path / "run"),
                           "--episodes", "8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["episodes"] == 8 and result["moves"] >= 8
    assert 0 <= result["queen_taken"] <= result["hanging_moves"] <= result["moves"]
