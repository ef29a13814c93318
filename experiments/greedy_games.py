"""The greedy evaluation games of a checkpoint, as `rl-vf eval` plays them (the *_mistakes.py scripts' input)."""
import argparse

import torch

from rl_vf.cli import Checkpoint, open_checkpoint, play


def parse_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run folder or checkpoint folder")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of the eval episodes (as rl-vf eval)")
    return p.parse_args()


def open_on_cpu(env_id: str, args: argparse.Namespace) -> Checkpoint:
    """``args.checkpoint`` for ``env_id`` with the run's env arguments, on one CPU thread."""
    torch.set_num_threads(1)
    return open_checkpoint(argparse.Namespace(checkpoint=args.checkpoint, env=env_id, env_kwargs=None, device="cpu",
                                              max_action_tokens=None))


def greedy_games(env_id: str, args: argparse.Namespace) -> tuple[Checkpoint, dict, list]:
    """``(checkpoint, eval metrics, episodes)``: ``args.episodes`` greedy games on ``env_id``."""
    c = open_on_cpu(env_id, args)
    metrics, episodes = play(c, args, greedy=True)
    return c, metrics, episodes
