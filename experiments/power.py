"""How many seeds the crossover study needs: the chance that a true speed-up gives a 95% CI that excludes 1.

Each run's episodes to the threshold is drawn log-normally around the arm's median (the spread
``--log-sd`` measured across seeds of real runs, see docs/crossover.md), rounded up to whole
updates, and the study's statistic (``stats.threshold_ratio``, ratio of medians with a bootstrap
CI) is computed on each simulated study.

    python experiments/power.py --speedup 2 --log-sd 0.2 0.35 --seeds 3 4 6 8 10
"""
import argparse
import json

import numpy as np

from rl_vf.stats import threshold_ratio


def power(speedup: float, log_sd: float, seeds: int, studies: int, median: float, per_update: int,
          rng: np.random.Generator) -> float:
    hits = 0
    for i in range(studies):
        ref = np.ceil(median * np.exp(rng.normal(0, log_sd, seeds)) / per_update) * per_update
        arm = np.ceil(median / speedup * np.exp(rng.normal(0, log_sd, seeds)) / per_update) * per_update
        r = threshold_ratio(arm, ref, reps=1000, seed=i)  # median(ref) / median(arm): the speed-up
        hits += r["lo"] > 1
    return hits / studies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speedup", type=float, nargs="+", default=[2.0])
    p.add_argument("--log-sd", type=float, nargs="+", default=[0.2, 0.35])
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 6, 8, 10])
    p.add_argument("--studies", type=int, default=400, help="simulated studies per setting")
    p.add_argument("--median", type=float, default=2048, help="the reference's median episodes to the threshold")
    p.add_argument("--per-update", type=int, default=128, help="episodes per update (crossings come in these steps)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    for speedup in args.speedup:
        for sd in args.log_sd:
            row = {f"seeds={n}": power(speedup, sd, n, args.studies, args.median, args.per_update, rng)
                   for n in args.seeds}
            print(json.dumps({"speedup": speedup, "log_sd": sd, **row}))


if __name__ == "__main__":
    main()
