"""Success rate of a uniformly random *legal* policy on an env with a demonstrator interface.

The floor that a trained policy must clear: e.g. a random legal mover mates ~1.5% of KQK games.

    python experiments/random_legal_baseline.py --env ChessEndgame-v0 --episodes 1000 \
        --env-kwargs '{"compact": true}'
"""
import argparse
import json

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids)
from rl_vf.stats import wilson_interval
from rl_vf.actor import eval_seeds


def random_legal_success(env_id: str, env_kwargs: dict, episodes: int, seed: int) -> list[bool]:
    env = gym.make(env_id, **env_kwargs)
    rng = np.random.default_rng(seed)
    outcomes = []
    for reset_seed in eval_seeds(seed, episodes):  # the episodes of `rl-vf eval`
        env.reset(seed=reset_seed)
        while True:
            legal = env.unwrapped.legal_actions()
            _, _, terminated, truncated, info = env.step(legal[int(rng.integers(len(legal)))])
            if terminated or truncated:
                outcomes.append(bool(info.get("success", False)))
                break
    env.close()
    return outcomes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", required=True)
    p.add_argument("--env-kwargs", default="{}", help="JSON object of env arguments")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    wins = random_legal_success(args.env, json.loads(args.env_kwargs), args.episodes, args.seed)
    lo, hi = wilson_interval(sum(wins), len(wins))
    print(json.dumps({"env": args.env, "episodes": len(wins), "success_rate": sum(wins) / len(wins),
                      "ci95": [lo, hi]}))


if __name__ == "__main__":
    main()
