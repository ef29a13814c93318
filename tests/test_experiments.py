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
