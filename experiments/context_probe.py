"""Does the tiny model read the latest board? Imitation of an env's expert under three contexts.

A turn-based env's transcript is a run of boards: BOS, board, move, board, move, ... The policy must
pick its move from the latest board. This fits the same tiny model to the same expert moves
(demonstrations with expert_prob 1.0) reading

- ``full``: the whole transcript, as RL reads it by default;
- ``window``: the whole transcript through an attention window of ``--window`` tokens
  (``attention_window``; the latest board and the move before it);
- ``latest``: BOS and the latest board only (one sample per move; the ceiling the window aims at),

and prints the held-out NLL (nats) and accuracy (argmax = the expert's move) of the expert's move
tokens every few steps, then a JSON line with the final figures. Each step fits about the same
number of moves in every variant.

    python experiments/context_probe.py --env ConnectFour-v0 --steps 800 --window 32
"""
import argparse
import json
import time
from itertools import groupby

import numpy as np
import torch

from rl_vf.algos.losses import masked_mean
from rl_vf.config import TrainConfig
from rl_vf.engine import Episode, RolloutBatch
from rl_vf.pretrain import demo_episode, stop_token
from rl_vf.actor import open_env, policy_for_env

VARIANTS = ("full", "window", "latest")


def latest_only(episode: Episode, bos: int) -> list[Episode]:
    """One episode per move: BOS, the observation just before the move, the move's tokens."""
    runs, i = [], 0  # (is_action, tokens) of each run of observation or action tokens, in order
    for is_action, group in groupby(episode.action_mask):
        n = len(list(group))
        runs.append((is_action, episode.tokens[i:i + n]))
        i += n
    out = []
    for (_, observation), (is_action, move) in zip(runs, runs[1:]):
        if is_action:
            sample = Episode(seed=None)
            sample.extend(observation if observation[0] == bos else [bos] + observation, is_action=False)
            sample.extend(move, is_action=True)
            out.append(sample)
    return out


def fit(variant: str, args, log) -> dict:
    cfg = TrainConfig(env=args.env, seed=args.seed, attention_window=args.window if variant == "window" else 0)
    env_info = open_env(cfg.env, {})
    torch.manual_seed(args.seed)
    policy, tok = policy_for_env("tiny", cfg, env_info)
    env, rng = env_info.make(), np.random.default_rng(args.seed)
    max_tokens = env_info.action_tokens

    def samples(n, first_seed):
        episodes = [demo_episode(env, first_seed + i, rng, 1.0, tok, max_tokens) for i in range(n)]
        if variant == "latest":
            episodes = [move for e in episodes for move in latest_only(e, tok.bos_token_id)]
        return RolloutBatch.from_episodes(episodes, tok.pad_token_id)

    train, test = samples(args.demos, 0), samples(300, 10**6)
    stop = stop_token(tok)
    # Rows per step: about --moves-per-step moves (a transcript holds all of its episode's moves).
    moves = int(((train.action_mask[:, 1:] == 1) & (train.action_mask[:, :-1] == 0)).sum())
    batch = max(1, round(args.moves_per_step * len(train) / moves))
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)

    def move_mask(b):  # the move's own tokens, not the stop token after it
        return (b.action_mask * (b.tokens != stop)).bool()

    def held_out() -> tuple[float, float]:
        with torch.no_grad():
            logp = policy.score(test.tokens, test.attention_mask)["logprobs"][move_mask(test)]
        return float(-logp.mean()), float((logp > np.log(0.5)).float().mean())

    start, row = time.perf_counter(), {}
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(train), (batch,), generator=generator)
        out = policy.score(train.tokens[idx], train.attention_mask[idx])
        loss = -masked_mean(out["logprobs"], move_mask(train)[idx].float())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        if step % args.report_every == 0 or step == args.steps:
            nll, acc = held_out()
            row = {"variant": variant, "step": step, "nll": round(nll, 4), "accuracy": round(acc, 4),
                   "wall_s": round(time.perf_counter() - start, 1)}
            log(f"{variant:>6} step {step:>5}: held-out NLL {nll:.3f}, accuracy {acc:.3f} ({row['wall_s']:.0f} s)")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="ConnectFour-v0", help="an env with a demonstrator (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--window", type=int, default=32, help="attention window of the window variant (tokens)")
    parser.add_argument("--steps", type=int, default=800, help="gradient steps per variant")
    parser.add_argument("--moves-per-step", type=int, default=512, help="expert moves per gradient step")
    parser.add_argument("--demos", type=int, default=4000, help="training demonstrations (episodes)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--report-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    final = [fit(variant, args, lambda line: print(line, flush=True)) for variant in args.variants]
    print(json.dumps({"env": args.env, "window": args.window, "steps": args.steps, "final": final}))


if __name__ == "__main__":
    main()
