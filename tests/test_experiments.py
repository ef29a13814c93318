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
    from rl_vf.trainer import open_env, policy_for_env

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
