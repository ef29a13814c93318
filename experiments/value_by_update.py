"""How the value side of a comparison's runs behaved, update by update: the median over seeds of
each variant's ``value/*`` metrics, critic warm-up updates and advantage-related statistics.

    python experiments/value_by_update.py runs/<comparison> [--keys value/bias,critic/warmup]

Reads ``<comparison>/runs/<variant>/s<seed>/metrics.jsonl`` (written by ``rl-vf compare``) and
prints one table per key: a row per update, a column per variant (the median over its seeds, and
how many seeds logged the key there). Variants that never log a key (reinforce has no values) are
left out of its table.
"""
import argparse
import glob
import os

import numpy as np

from rl_vf.metrics_log import read_metrics

KEYS = ("advantage/decision_r2", "value/bias", "value/explained_variance_mc", "critic/warmup", "grad_norm/pg", "grad_norm/vf",
        "train/success_rate")


def by_update(folder: str, key: str) -> dict[str, dict[int, list[float]]]:
    """variant -> update -> the key's values over seeds (updates where a seed logged it)."""
    out: dict[str, dict[int, list[float]]] = {}
    for run in sorted(glob.glob(os.path.join(folder, "runs", "*", "s*", "metrics.jsonl"))):
        variant = os.path.basename(os.path.dirname(os.path.dirname(run)))
        for row in read_metrics(run):
            if row.get(key) is not None:
                out.setdefault(variant, {}).setdefault(row["update"], []).append(float(row[key]))
    return out


def table(key: str, data: dict[str, dict[int, list[float]]]) -> str:
    variants = sorted(data)
    updates = sorted({u for per in data.values() for u in per})
    lines = [f"## {key} (median over seeds; n seeds)", "| update | " + " | ".join(variants) + " |",
             "|---" * (len(variants) + 1) + "|"]
    for u in updates:
        cells = [f"{np.median(data[v][u]):+.3f} ({len(data[v][u])})" if u in data[v] else "" for v in variants]
        lines.append(f"| {u} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("comparison", help="a comparison folder (rl-vf compare --out)")
    p.add_argument("--keys", default=",".join(KEYS), help=f"comma-separated metric names (default: {','.join(KEYS)})")
    args = p.parse_args(argv)
    if not glob.glob(os.path.join(args.comparison, "runs", "*", "s*", "metrics.jsonl")):
        p.error(f"no runs/<variant>/s<seed>/metrics.jsonl under {args.comparison!r}")
    for key in args.keys.split(","):
        data = by_update(args.comparison, key.strip())
        print(table(key.strip(), data) if data else f"## {key}: no run logged it", end="\n\n")


if __name__ == "__main__":
    main()
