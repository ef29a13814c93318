"""The trainer on the chess envs: multi-character moves, warm start, and Stockfish as the opponent."""
import json
import os

from rl_vf.cli import main
from rl_vf.metrics_log import read_metrics
from tests.test_chess import HAS_TABLES, needs_stockfish, stockfish_processes

SMALL = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64", "--threads", "1"]


def test_endgame_warm_start_then_rl(tmp_path):
    warm = tmp_path / "warm"
    kwargs = ["--env", "ChessEndgame-v0", "--env-kwargs", '{"compact": true}']
    assert main(["pretrain", *kwargs, "--demos", "16", "--expert-prob", "1", "--warm-start-epochs", "1",
                 "--final-eval-episodes", "8", "--out", str(warm), *SMALL]) == 0
    summary = json.loads((warm / "summary.json").read_text())
    # The tablebase expert mates every time; the greedy fallback mates most KQK games.
    assert summary["demo/success_rate"] == 1.0 if HAS_TABLES else summary["demo/success_rate"] > 0.5
    run = tmp_path / "rl"
    assert main(["train", *kwargs, "--model", str(warm / "checkpoints" / "final"), "--total-episodes", "16",
                 "--episodes-per-update", "16", "--final-eval-episodes", "8", "--eval-every", "0",
                 "--wandb", "disabled", "--out", str(run), "--threads", "1"]) == 0
    row = read_metrics(run / "metrics.jsonl")[0]
    assert row["train/episodes"] == 16 and row["train/episode_len_tokens"] > 77  # at least the first board
    assert row["train/invalid_action_rate"] == 0.0  # the env default: sample legal moves only


@needs_stockfish
def test_chess_against_stockfish_trains_and_leaves_no_engine(tmp_path):
    run = tmp_path / "rl"
    env_kwargs = '{"opponent": "stockfish", "compact": true, "max_moves": 4, "invalid_penalty": 1.0}'
    assert main(["train", "--env", "Chess-v0", "--env-kwargs", env_kwargs, "--total-episodes", "8",
                 "--episodes-per-update", "8", "--final-eval-episodes", "4", "--eval-every", "0",
                 "--wandb", "disabled", "--out", str(run), *SMALL]) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert rows[0]["train/episodes"] == 8 and "loss/vf" in rows[0]
    assert rows[0]["train/invalid_action_rate"] == 0.0  # legal games, from an untrained policy
    assert not stockfish_processes(os.getpid())
