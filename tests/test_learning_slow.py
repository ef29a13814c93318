"""Long learning runs (`make test-slow`, minutes each): the default configs reach their targets."""
import json

import pytest

from rl_vf.cli import main


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("algo, min_win", [("ppo", 0.85), ("reinforce", 0.75)])
def test_tictactoe_default_config_learns(tmp_path, algo, min_win):
    """Issue 2's target: default config, 1000 greedy games against the random opponent."""
    out = tmp_path / algo
    assert main(["train", "--env", "TicTacToe-v0", "--algo", algo, "--seed", "0", "--threads", "1",
                 "--wandb", "disabled", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval/episodes"] == 1000
    assert summary["eval/success_rate"] >= min_win and summary["eval/invalid_action_rate"] <= 0.02, summary
