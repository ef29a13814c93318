"""How a ChessEndgame-v0 policy's greedy games end, and how often it misses a mate in one.

Plays the final evaluation's games (same seeds as `rl-vf eval`), replays each in the env and counts

- ``end_<reason>``: how the game ended: ``mate``, ``stalemate``, ``insufficient_material`` (the
  defender took the agent's piece), ``threefold_repetition``, ``fifty_moves``, ``out_of_moves``
  (``max_moves`` used up) or ``invalid``;
- ``mate_in_one`` and ``mate_in_one_missed``: moves where a mate in one was on the board, and
  those that did not play one.

    python experiments/chess_endgame_mistakes.py --checkpoint runs/<run> --episodes 1000
"""
import json
from collections import Counter

import chess

from envs import chess_common as cc
from greedy_games import greedy_games, parse_args
from rl_vf.actor import eval_seeds, transcript


def has_mate_in_one(board: chess.Board) -> bool:
    for move in board.legal_moves:
        board.push(move)
        mate = board.is_checkmate()
        board.pop()
        if mate:
            return True
    return False


def ending(board: chess.Board, info: dict) -> str:
    if info["invalid_action"]:
        return "invalid"
    if info.get("move_limit"):
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
            counts[f"end_{ending(env.unwrapped.board, info)}"] += 1
            return counts
    raise ValueError(f"the game of seed {seed} did not end after its {len(actions)} moves")


def main() -> None:
    args = parse_args(__doc__)
    c, metrics, episodes = greedy_games("ChessEndgame-v0", args)
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
