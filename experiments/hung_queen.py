"""Does a ChessEndgame-v0 (KQK) critic notice a hung queen within the move that hangs it?

A queen left attacked by the defender's king and undefended is a decisive mistake that the
diagnostics' turn-level detection cannot see: when the defender takes it the game ends at once (a
draw), so no later turn is ever valued. This reads the critic inside the move instead. It plays
sampled games of a checkpoint (the policy's own distribution, where hung queens happen), scores them
with the run's value function and, for every agent move, compares

- V at the move's first action token (the turn's value, as GAE uses it) with
- V at its last action token (the critic has read the whole move),

between moves that hang the queen and the others: the mean change over the move with 95% bootstrap
intervals, and its AUROC for telling a hanging move from a safe one (0.5: the critic does not notice).

    python experiments/hung_queen.py --checkpoint runs/kqk/s0 --episodes 300
"""
import json

import chess
import numpy as np

from greedy_games import open_on_cpu, parse_args
from rl_vf.actor import eval_seeds
from rl_vf.cli import play
from rl_vf.diagnostics import auroc
from rl_vf.engine import RolloutBatch
from rl_vf.learner import score_batch
from rl_vf.stats import bootstrap_ci


def hangs_queen(board: chess.Board, move: chess.Move) -> bool:
    """After ``move``, the mover's queen stands where the other side attacks it and the mover does not defend it."""
    side = board.turn
    after = board.copy(stack=False)
    after.push(move)
    return any(after.is_attacked_by(not side, sq) and not after.is_attacked_by(side, sq)
               for sq in after.pieces(chess.QUEEN, side))


def replay_moves(env, seed: int, actions: list[str]) -> list[tuple[bool, bool]]:
    """``(hangs the queen, the defender took it)`` for each legal agent move of one game."""
    env.reset(seed=seed)
    out = []
    for action in actions:
        before = env.unwrapped.board  # a copy
        _, _, terminated, truncated, _ = env.step(action)
        after = env.unwrapped.board
        if len(after.move_stack) > len(before.move_stack):  # an invalid action pushes nothing
            hung = hangs_queen(before, after.move_stack[len(before.move_stack)])
            out.append((hung, hung and not any(after.pieces(chess.QUEEN, before.turn))))
        if terminated or truncated:
            break
    return out


def action_spans(mask: list[int]) -> list[tuple[int, int]]:
    """``(first, last)`` token positions of each run of action tokens."""
    spans, start = [], None
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i - 1))
            start = None
    return spans


def interval(x: np.ndarray, seed: int) -> list[float]:
    return [round(v, 4) for v in bootstrap_ci(x, statistic=np.mean, seed=seed)] if len(x) else []


def main() -> None:
    args = parse_args(__doc__)
    c = open_on_cpu("ChessEndgame-v0", args)
    _, episodes = play(c, args, greedy=False)
    batch = RolloutBatch.from_episodes(episodes, c.tokenizer.pad_token_id)
    values = score_batch(c.policy, batch, batch.attention_mask.sum(1), c.run.minibatch_size,
                         c.run.update_tokens)["values"]
    env = c.env_info.make()
    change, hung, taken = [], [], []
    for i, (seed, ep) in enumerate(zip(eval_seeds(args.seed, args.episodes), episodes)):
        moves = replay_moves(env, seed, ep.actions)
        # An invalid action ends a ChessEndgame game, so only the last span can lack a move.
        for (first, last), (h, t) in zip(action_spans(ep.action_mask), moves):
            change.append(float(values[i, last] - values[i, first]))
            hung.append(h)
            taken.append(t)
    env.close()
    change, hung = np.array(change), np.array(hung, dtype=bool)
    print(json.dumps({
        "checkpoint": c.path, "episodes": len(episodes), "moves": int(len(change)),
        "hanging_moves": int(hung.sum()), "queen_taken": int(sum(taken)),
        "value_change_hanging": interval(change[hung], args.seed),
        "value_change_other": interval(change[~hung], args.seed),
        "auroc_drop_for_hanging": round(auroc(-change, hung), 4),
    }))


if __name__ == "__main__":
    main()
