"""How a ChessEndgame-v0 policy's greedy games end, and how often it misses a mate in one.

Plays the final evaluation's games (same seeds as `rl-vf eval`), replays each in the env and counts

- ``end_<reason>``: how the game ended: ``mate``, ``stalemate``, ``insufficient_material`` (the
  defender took the agent's piece), ``threefold_repetition``, ``fifty_moves``, ``out_of_moves``
  (``max_moves`` used up) or ``invalid``;
- ``mate_in_one`` and ``mate_in_one_missed``: moves where a mate in one was on the board, and
  those that did not play one.

    python experiments/chess_endgame_mistakes.py --checkpoint runs/<run> --episodes 1000
"""
import argparse
import json
from collections import Counter

import chess
import torch

from envs import chess_common as cc
from rl_vf.cli import open_checkpoint
from rl_vf.trainer import eval_seeds, evaluate, transcript


def has_mate_in_one(board: chess.Board) -> bool:
    for move in board.legal_moves:
        board.push(move)
        mate = board.is_checkmate()
        board.pop()
        if mate:
            return True
    return False


def ending(board: chess.Board, info: dict, truncated: bool) -> str:
    if info["invalid_action"]:
        return "invalid"
    if truncated:
        return "out_of_moves"
    return "mate" if info["success"] else cc.game_outcome(board).termination.name.lower()


def replay(env, seed: int, actions: list[str]) -> Counter:
    """Counts for one game: its ending and the mates in one it had and missed."""
    counts = Counter()
    env.reset(seed=seed)
    for action in actions:
        available = has_mate_in_one(env.unwrapped.board)
        _, _, terminated, truncated, info = env.step(action)
        counts["mate_in_one"] += available
        counts["mate_in_one_missed"] += available and not info["success"]
        if terminated or truncated:
            counts[f"end_{ending(env.unwrapped.board, info, truncated)}"] += 1
            return counts
    raise ValueError(f"the game of seed {seed} did not end after its {len(actions)} moves")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run folder or checkpoint folder")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of the eval episodes (as rl-vf eval)")
    args = p.parse_args()
    torch.set_num_threads(1)
    c = open_checkpoint(argparse.Namespace(checkpoint=args.checkpoint, env="ChessEndgame-v0", env_kwargs=None,
                                           device="cpu", max_action_tokens=None))
    metrics, episodes = evaluate(c.policy, c.tokenizer, c.env_info.make, c.run, args.episodes, args.seed, True,
                                 c.max_action_tokens, c.device)
    env = c.env_info.make()
    counts = Counter()
    for reset_seed, ep in zip(eval_seeds(args.seed, args.episodes), episodes):
        actions = [part["action"] for part in transcript(c.tokenizer, ep) if "action" in part]
        counts.update(replay(env, reset_seed, actions))
    env.close()
    missed = counts["mate_in_one_missed"] / max(counts["mate_in_one"], 1)
    print(json.dumps({"eval/success_rate": metrics["eval/success_rate"], **counts, "mate_in_one_missed_rate": missed}))


if __name__ == "__main__":
    main()
