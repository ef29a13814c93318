"""``rl-vf compare`` and ``rl-vf suite``: train every (variant, seed) of a comparison as a
process of its own (forked from a server that imported rl_vf once), then report final
performance, learning curves, sample efficiency and compute with stratified-bootstrap confidence
intervals (``rl_vf.stats``); ``suite`` runs one comparison per
entry of a YAML file and summarises across them.

Definitions the reports use (each report repeats them):

- A variant is ``ALGO[:BASELINE][,key=value,...]`` (``reinforce:rloo,group_size=8``, ``ppo,lam=1.0``).
  ``reinforce:rloo`` and ``reinforce:group`` get ``group_size=4`` unless the variant or ``--set``
  gives one.
- The smoothed train curve of a run is the running mean of the train metric (``train/success_rate``
  for ``--metric eval/success_rate`` and for ``eval/success_rate_sampled``) over ``SMOOTH``
  consecutive updates, defined from the ``SMOOTH``-th update on (a run with fewer updates has one
  point, the mean of all of them), so one lucky batch never counts. A run's final train score is the
  last point of that curve.
- The threshold is ``--threshold`` (a fraction, default 0.8) times the best variant's IQM over
  seeds of the final train score, or ``--target`` (a fixed level of the smoothed train curve,
  e.g. 0.8 sampled success) where given. A run reaches it at the first update whose smoothed value is
  >= the threshold (the episodes and generated tokens done by then); a run that never does is
  censored ("never", inf), and ``stats.threshold_ratio`` keeps censored runs in its medians.
- Equal compute: B is the smallest final ``perf/trained_tokens`` of any finished run; each run's
  smoothed train curve is interpolated at B and the IQM over seeds is reported per variant.
- Suite scores are normalised to [0, 1] per task: success rates already are; any other metric is
  min-max scaled over all the task's runs, all variants together.
- The final metric is saturated when every finished run of every variant scores at its ceiling:
  >= ``SATURATED`` (0.99) for a success rate (``RATES``); other metrics have no known ceiling and
  are never called saturated. The report then says that the metric cannot separate the variants and
  points at sample efficiency and at ``eval/success_rate_sampled`` (the success rate of the sampled
  policy, which summary.json records beside the greedy ``eval/success_rate``).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import runpy
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from rl_vf import stats
from rl_vf.advantages import BASELINES
from rl_vf.algos import ALGOS
from rl_vf.config import FIELDS, WANDB_MODES, ConfigError, choice, coerce, flag, make_config, read_yaml, unknown_key
from rl_vf.metrics_log import log_report
from rl_vf.report import ci, num, plot_curves, plot_intervals, plot_profiles, write_outputs

# Final metrics from summary.json, higher is better; eval/success_rate_sampled is in the summaries of
# trainers that record the sampled policy's success beside the greedy one.
METRICS = ("eval/success_rate", "eval/return_mean", "eval/success_rate_sampled")
TRAIN_METRICS = {"eval/success_rate": "train/success_rate", "eval/return_mean": "train/return_mean",
                 "eval/success_rate_sampled": "train/success_rate"}  # each one's learning curve
RATES = ("eval/success_rate", "eval/success_rate_sampled")  # in [0, 1], ceiling 1
SATURATED = 0.99  # a rate at or above this is at its ceiling
X_AXES = {"train/episodes": "episodes", "train/env_steps": "env steps",
          "perf/generated_tokens": "generated tokens", "perf/wall_s": "wall time (s)"}
COMPUTE_KEYS = {"train/episodes": "episodes", "train/env_steps": "env steps",
                "perf/generated_tokens": "generated tokens", "perf/trained_tokens": "trained tokens",
                "perf/wall_s": "wall time (s)"}
CROSSING_AXES = ("train/episodes", "perf/generated_tokens")
SMOOTH = 3  # updates in the running mean of the train curve
GRID_POINTS = 50
REPS, ALPHA = 2000, 0.05
GROUP_BASELINES = ("rloo", "group")
DEFAULT_GROUP_SIZE = 4
# Keys compare sets itself (or takes from its own flags); neither a variant nor --set may set them.
RESERVED = ("algo", "env", "env_kwargs", "seed", "out", "wandb", "wandb_group", "wandb_job_type", "threads")
LOG = "train.log"
SUITE_KEYS = ("seeds", "variants", "jobs", "metric", "entries")
ENTRY_KEYS = ("name", "env", "env_kwargs", "episodes", "set")


# ---- variants and comparisons -------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str  # as typed, e.g. "reinforce:rloo,group_size=4"
    overrides: dict  # its config keys

    @property
    def folder(self) -> str:
        return safe_name(self.name)


def safe_name(name: str) -> str:
    """``name`` as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name)


def check_keys(mapping: dict, where: str) -> dict:
    """Config overrides of a variant or --set: known keys that compare does not set itself."""
    for key in mapping:
        if key not in FIELDS:
            raise unknown_key(key, where)
        if key in RESERVED:
            raise ConfigError(f"{key!r} in {where}: compare sets it itself ({', '.join(RESERVED)} are reserved)")
    return mapping


def parse_pairs(pairs: list[str], where: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"expected key=value in {where}, got {pair!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return check_keys(out, where)


def parse_variant(text: str, common: dict) -> Variant:
    """``ALGO[:BASELINE][,key=value,...]``; ``common`` (the --set keys) decides whether a group
    baseline still needs the default group_size."""
    head, *pairs = text.split(",")
    algo, colon, baseline = head.partition(":")
    choice(algo, ALGOS, "algo")
    overrides = {"algo": algo}
    if colon:
        if algo != "reinforce":
            raise ConfigError(f"a baseline (':{baseline}') only applies to reinforce")
        choice(baseline, BASELINES, "baseline")
        overrides["baseline"] = baseline
    overrides.update(parse_pairs(pairs, "the variant"))
    if overrides.get("baseline") in GROUP_BASELINES and "group_size" not in {**common, **overrides}:
        overrides["group_size"] = DEFAULT_GROUP_SIZE
    return Variant(text, overrides)


@dataclass
class Comparison:
    """One env, its variants and seeds, and the folder its runs and report go to."""

    out: str
    env: str
    env_kwargs: dict
    variants: list[Variant]
    seeds: list[int]
    common: dict  # config keys for every run (--episodes and --set)
    metric: str = "eval/success_rate"
    threshold: float = 0.8
    wandb: str = "offline"
    target: float | None = None  # a fixed sample-efficiency threshold (replaces threshold x best)
    group: str | None = None  # wandb group of its runs (None: the comparison's name; a sweep shares one)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.out))

    def run_dir(self, variant: Variant, seed: int) -> str:
        return os.path.join(self.out, "runs", variant.folder, f"s{seed}")

    def run_config(self, variant: Variant, seed: int) -> dict:
        return {"env": self.env, "env_kwargs": self.env_kwargs, "seed": seed, **self.common, **variant.overrides,
                "threads": 1, "wandb": self.wandb, "wandb_group": self.group or self.name, "wandb_job_type": variant.name,
                "out": self.run_dir(variant, seed)}


def make_comparison(out: str, env: str, env_kwargs, variants: list[str], seeds: int, episodes: int | None = None,
                    sets: dict | None = None, metric: str = "eval/success_rate", threshold: float = 0.8,
                    wandb: str = "offline", target: float | None = None) -> Comparison:
    """A checked comparison: every run's config is built (and validated) before anything runs."""
    from rl_vf.actor import open_env  # imports torch; only needed here

    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold is a fraction of the best final IQM, in (0, 1]; got {threshold}")
    choice(metric, METRICS, "metric")
    choice(wandb, WANDB_MODES, "wandb")
    if not variants:
        raise ConfigError("no variants given; e.g. --algos 'ppo reinforce:rloo'")
    common = check_keys(dict(sets or {}), "--set")
    if episodes is not None:
        common["total_episodes"] = episodes
    parsed = []
    for text in variants:
        try:
            parsed.append(parse_variant(text, common))
        except ConfigError as e:
            raise ConfigError(f"variant {text!r}: {e}") from None
    folders = [v.folder for v in parsed]
    if len(set(folders)) < len(folders):
        raise ConfigError(f"two variants share a name or folder: {', '.join(v.name for v in parsed)}")
    comp = Comparison(out, env, coerce("env_kwargs", env_kwargs), parsed, list(range(seeds)), common,
                      metric, threshold, wandb, target)
    for v in parsed:
        try:
            make_config(comp.run_config(v, 0))
        except ConfigError as e:
            raise ConfigError(f"variant {v.name!r}: {e}") from None
    open_env(env, comp.env_kwargs)
    return comp


# ---- running ------------------------------------------------------------------------------------
def finished(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, "summary.json"))


def resumable(run_dir: str) -> bool:
    ckpt = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(ckpt) and any(d.startswith("update_") for d in os.listdir(ckpt))


def train_command(config: dict, resume: str | None) -> list[str]:
    """``rl-vf train``'s arguments for a run of ``config`` (continuing ``resume`` if given)."""
    flags = [a for key, value in config.items()
             for a in (flag(key), json.dumps(value) if isinstance(value, dict) else str(value))]
    return ["train", *(["--resume", resume] if resume else []), *flags]


# Each run is a process of its own (isolated, killable, its own exit code), forked from a server that
# has imported rl_vf once: a run then starts in milliseconds instead of the seconds that importing
# torch, transformers and wandb takes, which dominated a short run (measured in docs/benchmark.md).
_RUNNERS = multiprocessing.get_context("forkserver")
_RUNNERS.set_forkserver_preload(["rl_vf.cli", "envs"])


def run_train(argv: list[str], log_path: str, cwd: str, environ: dict) -> None:
    """The body of one run's process: ``rl-vf train argv`` as ``python -m rl_vf`` would run it in
    ``cwd`` with ``environ``, its output appended to ``log_path``; the exit code is main's."""
    os.chdir(cwd)
    sys.path.insert(0, cwd)  # as python -m does: the working directory's modules (a user's env) import
    os.environ.clear()
    os.environ.update(environ)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.argv = ["rl-vf", *argv]
    runpy.run_module("rl_vf", run_name="__main__")  # exits with main's code (SystemExit)


def launch(comp: Comparison, variant: Variant, seed: int, parallel: Sequence[str] = ()) -> tuple[int, float]:
    """Train one run to its end (continuing from a checkpoint if there is one), with the ``parallel``
    flags of ``rl-vf train`` (``parallel_flags``: its processes, FSDP); returns the exit code (negative:
    killed by that signal) and the seconds it took. Output goes to the run's train.log."""
    run_dir = comp.run_dir(variant, seed)
    resume = run_dir if resumable(run_dir) else None
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)  # a run that died before its first checkpoint starts over
    os.makedirs(run_dir, exist_ok=True)
    argv = [*train_command(comp.run_config(variant, seed), resume), *parallel]
    log_path = os.path.join(run_dir, LOG)
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(['rl-vf', *argv])}\n")
    start = time.monotonic()
    return run_forked(argv, log_path), time.monotonic() - start


def run_forked(argv: list[str], log_path: str) -> int:
    """``rl-vf train argv`` in a process forked from the preloaded server, here and with this
    environment, output appended to ``log_path``; returns its exit code (negative: killed by that signal)."""
    run = _RUNNERS.Process(target=run_train, args=(argv, log_path, os.getcwd(), dict(os.environ)))
    run.start()
    run.join()
    return run.exitcode


def log_tail(path: str, lines: int = 12) -> str:
    with open(path, errors="replace") as f:
        text = [line for line in re.split(r"[\r\n]+", f.read()) if line.strip()]
    return "\n".join("    " + line for line in text[-lines:])


def run_all(comps: list[Comparison], jobs: int, desc: str, parallel: Sequence[str] = ()) -> list[str]:
    """Train every run of ``comps`` without a summary.json, ``jobs`` at a time (across comparisons),
    each with the ``parallel`` flags (``parallel_flags``); returns the failed runs."""
    runs = [(c, v, s) for c in comps for v in c.variants for s in c.seeds]
    todo = [(c, v, s) for c, v, s in runs if not finished(c.run_dir(v, s))]
    print(f"{desc}: {len(runs) - len(todo)} of {len(runs)} runs already finished; "
          f"running {len(todo)}, {jobs} at a time", file=sys.stderr)
    failed = []
    with tqdm(total=len(runs), initial=len(runs) - len(todo), unit="run", desc=desc) as bar, \
            ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(launch, c, v, s, parallel): (c, v, s) for c, v, s in todo}
        for future in as_completed(futures):
            c, v, s = futures[future]
            code, seconds = future.result()
            run_dir = c.run_dir(v, s)
            where = f"{c.name} " if len(comps) > 1 else ""
            if code == 0 and finished(run_dir):
                with open(os.path.join(run_dir, "summary.json")) as f:
                    score = json.load(f).get(c.metric)
                shown = "not in summary.json" if score is None else f"{score:.3f}"
                bar.write(f"{where}{v.name} s{s}: done in {seconds / 60:.1f} min, {c.metric}={shown}")
            else:
                failed.append(f"{where}{v.name} s{s}")
                bar.write(f"{where}{v.name} s{s}: FAILED (exit {code}); end of {os.path.join(run_dir, LOG)}:\n"
                          + log_tail(os.path.join(run_dir, LOG)))
            bar.update()
    return failed


# ---- loading runs -------------------------------------------------------------------------------
@dataclass
class Run:
    seed: int
    summary: dict | None  # None: the run did not finish
    rows: list[dict]

    def series(self, xkey: str, ykey: str) -> tuple[np.ndarray, np.ndarray]:
        """The rows that have both keys, as x and y arrays."""
        pts = [(r[xkey], r[ykey]) for r in self.rows if r.get(xkey) is not None and r.get(ykey) is not None]
        return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)

    def smoothed(self, xkey: str, ykey: str) -> tuple[np.ndarray, np.ndarray]:
        """The running mean of ``ykey`` over SMOOTH updates, at the x of each window's last update."""
        x, y = self.series(xkey, ykey)
        k = min(SMOOTH, len(y))
        return x[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid")


def load_runs(comp: Comparison) -> dict[str, list[Run]]:
    from rl_vf.metrics_log import read_metrics

    runs = {}
    for v in comp.variants:
        runs[v.name] = []
        for s in comp.seeds:
            d = comp.run_dir(v, s)
            summary = None
            if finished(d):
                with open(os.path.join(d, "summary.json")) as f:
                    summary = json.load(f)
            rows = read_metrics(os.path.join(d, "metrics.jsonl")) if summary else []
            runs[v.name].append(Run(s, summary, rows))
    return runs


# ---- statistics ---------------------------------------------------------------------------------
def improvement(scores: dict[str, np.ndarray], seed: int = 0) -> list[dict]:
    """P(X > Y) with its CI for every ordered pair of variants."""
    return [{"x": x, "y": y, "poi": stats.probability_of_improvement_ci(scores[x], scores[y], REPS, ALPHA, seed)}
            for x in scores for y in scores if x != y]


def band(series: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray, seed: int = 0) -> dict | None:
    """IQM over runs with a bootstrap band, on the grid points that every run covers."""
    curves = np.stack([stats.interpolate_curve(x, y, grid) for x, y in series])
    keep = ~np.isnan(curves).any(axis=0)
    if not keep.any():
        return None
    stat, lo, hi = stats.curve_band(curves[:, keep], REPS, ALPHA, seed)
    return {"x": grid[keep], "iqm": stat, "lo": lo, "hi": hi}


def learning_curves(done: dict[str, list[Run]], keys: list[str], seed: int = 0) -> dict:
    """{metric: {x axis: {variant: band}}}; runs are interpolated onto one grid per axis."""
    out = {}
    for key in keys:
        out[key] = {}
        for axis in X_AXES:
            series = {v: [r.series(axis, key) for r in rs] for v, rs in done.items()}
            series = {v: s for v, s in series.items() if all(len(x) for x, _ in s)}
            if not series:
                continue
            xs = np.concatenate([x for s in series.values() for x, _ in s])
            grid = np.linspace(xs.min(), xs.max(), GRID_POINTS)
            bands = {v: band(s, grid, seed) for v, s in series.items()}
            out[key][axis] = {v: b for v, b in bands.items() if b is not None}
    return out


def sample_efficiency(done: dict[str, list[Run]], train_key: str, fraction: float, seed: int = 0,
                      target: float | None = None) -> dict:
    """Per-seed first crossings of the threshold (``target``, else ``fraction`` x the best final IQM)
    and their ratio to the first variant's."""
    finals = {v: np.array([r.smoothed("train/episodes", train_key)[1][-1] for r in rs]) for v, rs in done.items()}
    best = max(finals, key=lambda v: stats.iqm(finals[v]))
    level = target if target is not None else fraction * stats.iqm(finals[best])

    def crossing(run: Run, axis: str) -> float:
        if level <= 0:  # no run learned: a threshold of 0 would count every run as there from the start
            return math.inf
        return stats.first_crossing(*run.smoothed(axis, train_key), level)

    crossings = {axis: {v: np.array([crossing(r, axis) for r in rs]) for v, rs in done.items()}
                 for axis in CROSSING_AXES}
    ref = next(iter(done))
    ratios = {axis: {v: stats.threshold_ratio(c[ref], c[v], REPS, ALPHA, seed) for v in c if v != ref}
              for axis, c in crossings.items()}
    return {"fraction": fraction, "target": target, "level": level, "best_variant": best, "best_final_iqm": stats.iqm(finals[best]),
            "reference": ref, "final_train": finals, "crossings": crossings, "ratios": ratios}


def compute(done: dict[str, list[Run]], train_key: str, seed: int = 0) -> dict:
    """Mean cost per variant, and the train metric at the smallest common trained-token budget."""
    means = {v: {k: float(np.mean([r.rows[-1][k] for r in rs])) for k in COMPUTE_KEYS} for v, rs in done.items()}
    budget = min(r.rows[-1]["perf/trained_tokens"] for rs in done.values() for r in rs)
    at_budget = {}
    for v, rs in done.items():
        values = np.array([stats.interpolate_curve(*r.smoothed("perf/trained_tokens", train_key), [budget])[0]
                           for r in rs])
        # A run whose first smoothed point (after SMOOTH updates) lies past the budget has no value there.
        late = [r.seed for r, x in zip(rs, values) if np.isnan(x)]
        values = values[~np.isnan(values)]
        at_budget[v] = {"n": len(values), "iqm": stats.bootstrap_ci(values, reps=REPS, alpha=ALPHA, seed=seed)
                        if len(values) else None, "left_out": late}
    return {"means": means, "budget": budget, "at_budget": at_budget}


def verdict(x: str, y: str, poi: tuple, ratio: dict | None = None, level: float | None = None) -> str:
    """One line on X vs Y that claims only what the CIs support: a winner when the P(X > Y)
    interval excludes 0.5, a speed-up when the episodes-ratio interval excludes 1."""
    p, lo, hi = poi
    if lo > 0.5:
        line = f"{x} beats {y}: P({x}>{y})={p:.2f} [{lo:.2f}, {hi:.2f}]"
    elif hi < 0.5:
        line = f"{y} beats {x}: P({y}>{x})={1 - p:.2f} [{1 - hi:.2f}, {1 - lo:.2f}]"
    else:
        line = f"no clear difference between {x} and {y}: P({x}>{y})={p:.2f} [{lo:.2f}, {hi:.2f}]"
    if ratio is None:
        return line
    r, rlo, rhi = ratio["ratio"], ratio["lo"], ratio["hi"]
    if not math.isfinite(r) or r == 0:
        return (line + f"; {level:.2f} reached by {ratio['reached_a']:.0%} of {x}'s seeds and "
                f"{ratio['reached_b']:.0%} of {y}'s")
    if rlo > 1 or rhi < 1:
        return line + f"; {y} needs {r:.2f}x the episodes of {x} to reach {level:.2f} [{rlo:.2f}, {rhi:.2f}]"
    return line + f"; no clear difference in episodes to reach {level:.2f} ({y}/{x} {r:.2f} [{rlo:.2f}, {rhi:.2f}])"


def saturated(scores: dict[str, np.ndarray], metric: str) -> bool:
    """Every run of every variant at the metric's ceiling (a rate >= SATURATED): it cannot separate them."""
    return metric in RATES and all(len(x) and np.all(x >= SATURATED) for x in scores.values())


def analyse(runs: dict[str, list[Run]], metric: str, fraction: float, seed: int = 0,
            target: float | None = None) -> dict:
    """Every number of a comparison report, from its finished runs."""
    done = {v: [r for r in rs if r.summary is not None] for v, rs in runs.items()}
    done = {v: rs for v, rs in done.items() if rs}
    if metric == "eval/success_rate" and done and not any(metric in r.summary for rs in done.values() for r in rs):
        metric = "eval/return_mean"  # the default, for an env without success: no run records a success rate
    train_key = TRAIN_METRICS.get(metric, "train/" + metric.split("/", 1)[1])
    results = {
        "metric": metric, "train_metric": train_key,
        "seeds": {v: [r.seed for r in rs if r.summary is not None] for v, rs in runs.items()},
        "missing": {v: [r.seed for r in rs if r.summary is None] for v, rs in runs.items()},
    }
    if not done:
        return {**results, "verdict": []}
    lacking = [f"{v} s{r.seed}" for v, rs in done.items() for r in rs if metric not in r.summary]
    if lacking:
        raise ConfigError(f"{metric} is not in the summary.json of {', '.join(lacking)} (written by a trainer that "
                          f"does not record it); choose another --metric: {', '.join(METRICS)}")
    scores = {v: np.array([r.summary[metric] for r in rs]) for v, rs in done.items()}
    results["saturated"] = saturated(scores, metric)
    results["final"] = {v: stats.aggregate(x, REPS, ALPHA, seed) for v, x in scores.items()}
    results["scores"] = scores
    results["improvement"] = improvement(scores, seed)
    updates = [len(r.series("train/episodes", train_key)[0]) for rs in done.values() for r in rs]
    results["updates_per_run"] = [min(updates), max(updates)]
    periodic_eval = any(metric in row for rs in done.values() for r in rs for row in r.rows)
    # A single point per run draws no curve: none are made (the verdict says why).
    results["curves"] = learning_curves(done, [train_key, metric] if periodic_eval else [train_key], seed) \
        if max(updates) >= 2 else {}
    eff = results["sample_efficiency"] = sample_efficiency(done, train_key, fraction, seed, target)
    results["compute"] = compute(done, train_key, seed)
    poi = {(d["x"], d["y"]): d["poi"] for d in results["improvement"]}
    ref = eff["reference"]
    learned = eff["level"] > 0
    results["verdict"] = budget_lines(results["updates_per_run"], learned, train_key) + [
        verdict(ref, v, poi[ref, v], eff["ratios"]["train/episodes"][v] if learned else None, eff["level"])
        for v in done if v != ref]
    return results


def budget_lines(updates_per_run: list[int], learned: bool, train_key: str) -> list[str]:
    """What a reader must know first when the runs are too short to compare learning."""
    lo, hi = updates_per_run
    per_run = f"{lo} update{'s' if lo != 1 else ''}" if lo == hi else f"{lo}-{hi} updates"
    lines = []
    if not learned:
        lines.append(f"nothing learned: no run's {train_key} (smoothed over {SMOOTH} updates) rose above 0 in "
                     f"{per_run} per run, so no run reaches a threshold")
    if hi < 2:
        lines.append(f"one point per run: every run made {per_run}, so there are no learning curves and no "
                     f"episodes-to-threshold; give each run several updates (more --episodes, or a smaller "
                     f"episodes_per_update)")
    return lines


# ---- the comparison report ----------------------------------------------------------------------
def comparison_blocks(comp: Comparison, results: dict, plots: dict[str, str]) -> list[tuple]:
    metric, train_key = results["metric"], results["train_metric"]
    names = [v.name for v in comp.variants]
    missing = [f"{v} s{s}" for v, seeds in results["missing"].items() for s in seeds]
    blocks = [
        ("h1", f"Comparison {comp.name}"),
        ("p", f"env {comp.env} {json.dumps(comp.env_kwargs)}; variants {', '.join(names)}; seeds "
              f"{', '.join(map(str, comp.seeds))}; settings for every run {json.dumps(comp.common)}. "
              f"All intervals are 95% stratified-bootstrap percentile intervals ({REPS} resamples)."),
        ("p", "Missing runs (failed or not finished; left out of every number): "
              + (", ".join(missing) if missing else "none") + "."),
    ]
    if "final" not in results:
        return blocks
    eff, cost = results["sample_efficiency"], results["compute"]
    blocks += [("h2", "Verdict"), ("list", results["verdict"] or ["only one variant finished"])]

    blocks += [("h2", f"Final performance ({metric}, final evaluation in summary.json)"),
               ("table", ["variant", "n", "IQM", "mean", "median", "per seed"],
                [[v, len(results["scores"][v]), ci(t["iqm"]), ci(t["mean"]), ci(t["median"]),
                  ", ".join(f"s{s}: {x:.3f}" for s, x in zip(results["seeds"][v], results["scores"][v]))]
                 for v, t in results["final"].items()]),
               ("img", plots["final"], "final performance"),
               *([("p", saturation_note(metric))] if results["saturated"] else []),
               ("p", "Probability of improvement P(X > Y): the chance that a run of X scores higher than a run "
                     "of Y (ties count half)."),
               ("table", ["X", "Y", "P(X > Y)"], [[d["x"], d["y"], ci(d["poi"], 2)] for d in results["improvement"]])]

    blocks += [("h2", "Learning curves"),
               ("p", f"IQM over seeds with 95% bootstrap bands; each run is interpolated linearly onto a common "
                     f"grid of {GRID_POINTS} points per x axis, and a variant is drawn where all its runs have data. "
                     f"{metric} curves are the periodic evaluations (eval_every).")]
    blocks += [("img", plots[f"curves {key}"], f"learning curves {key}") for key in results["curves"]]
    if results["updates_per_run"][1] < 2:
        blocks.append(("p", "No curves: every run has a single update (see the verdict)."))

    ref = eff["reference"]
    blocks += [("h2", "Sample efficiency"),
               ("p", (f"Threshold {eff['level']:.3f} (--target) of the smoothed train curve, {train_key} averaged "
                      f"over {SMOOTH} consecutive updates. A run " if eff["target"] is not None else
                      f"Threshold {eff['level']:.3f} = {eff['fraction']} x {eff['best_final_iqm']:.3f}, the final "
                      f"IQM of {eff['best_variant']} (the best variant), where a run's final score is the last point "
                      f"of its smoothed train curve: {train_key} averaged over {SMOOTH} consecutive updates. A run ")
                     + f"reaches the threshold at the first update where the smoothed curve is >= it; 'never' = "
                     f"censored. Ratio = median(variant) / median({ref}) over seeds, with 'never' counted as "
                     f"infinitely late (so the ratio is inf once the variant's median run never gets there)."
                     + (" The best final score is 0: no run learned, so none counts as reaching it."
                        if eff["level"] <= 0 else ""))]
    for axis in CROSSING_AXES:
        seeds = sorted({s for v in eff["crossings"][axis] for s in results["seeds"][v]})
        blocks.append(("p", f"{X_AXES[axis].capitalize()} to reach {eff['level']:.3f}:"))
        blocks.append(("table", ["variant", *[f"s{s}" for s in seeds], f"ratio vs {ref}", "reached"],
                       [[v, *[num(dict(zip(results["seeds"][v], c)).get(s)) for s in seeds],
                         ci_ratio(eff["ratios"][axis].get(v)),
                         f"{np.isfinite(c).mean():.0%}"] for v, c in eff["crossings"][axis].items()]))

    blocks += [("h2", "Compute"),
               ("table", ["variant", *COMPUTE_KEYS.values()],
                [[v, *[num(m[k]) for k in COMPUTE_KEYS]] for v, m in cost["means"].items()]),
               ("p", f"Means over finished seeds, at the end of training. At equal compute: {train_key} (smoothed) "
                     f"at {num(cost['budget'])} trained tokens, the smallest final perf/trained_tokens of any run."),
               ("table", ["variant", "n", f"IQM of {train_key} at equal trained tokens", "left out"],
                [[v, d["n"], ci(d["iqm"]),
                  ", ".join(f"s{s}" for s in d["left_out"]) or "-"] for v, d in cost["at_budget"].items()])]
    if any(d["left_out"] for d in cost["at_budget"].values()):
        blocks.append(("p", f"Left out: runs whose first smoothed point (after their first {SMOOTH} updates) "
                            f"already trained more than {num(cost['budget'])} tokens have no value at that budget."))
    return blocks


def saturation_note(metric: str) -> str:
    """The report's line on a final metric that every run has at its ceiling."""
    if metric == "eval/success_rate_sampled":
        elsewhere = "on sample efficiency (how soon each reaches the threshold)"
    else:
        elsewhere = ("on sample efficiency (how soon each reaches the threshold) and on eval/success_rate_sampled, the "
                     "sampled policy's success beside the greedy one: where the runs' summary.json records it, the "
                     "same command with --metric eval/success_rate_sampled rewrites this report on it without "
                     "training again")
    return (f"Saturated: every run of every variant has {metric} >= {SATURATED} (its ceiling), so {metric} "
            f"cannot separate the variants. Compare them {elsewhere}.")


def ci_ratio(r: dict | None) -> str:
    return "reference" if r is None else f"{num(r['ratio'], 'inf')} [{num(r['lo'], 'inf')}, {num(r['hi'], 'inf')}]"


def write_report(comp: Comparison, seed: int = 0) -> dict:
    """report.md, report.html, results.json and plots/ from the comparison's finished runs."""
    results = analyse(load_runs(comp), comp.metric, comp.threshold, seed, comp.target)
    plot_dir = os.path.join(comp.out, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    plots = {}
    if "final" in results:
        plots["final"] = "plots/final.png"
        plot_intervals(results["final"], os.path.join(comp.out, plots["final"]), comp.metric)
        for key, curves in results["curves"].items():
            plots[f"curves {key}"] = f"plots/curves_{key.replace('/', '_')}.png"
            plot_curves(curves, os.path.join(comp.out, plots[f"curves {key}"]), key, list(results["final"]), X_AXES)
    blocks = comparison_blocks(comp, results, plots)
    results["comparison"] = {"name": comp.name, "env": comp.env, "env_kwargs": comp.env_kwargs,
                             "variants": {v.name: v.overrides for v in comp.variants}, "seeds": comp.seeds,
                             "common": comp.common, "threshold_fraction": comp.threshold, "target": comp.target,
                             "smooth_updates": SMOOTH,
                             "bootstrap": {"reps": REPS, "alpha": ALPHA, "seed": seed}}
    results["plots"] = plots
    write_outputs(comp.out, "report", "results.json", blocks, results, f"rl-vf comparison {comp.name}")
    return results


def run_comparison(comp: Comparison, jobs: int, parallel: Sequence[str] = ()) -> tuple[int, dict]:
    """Run what is missing (each run with the ``parallel`` flags: ``parallel_flags``), write the
    report; exit code 1 if a run failed."""
    failed = run_all([comp], jobs, comp.name, parallel)
    results = write_report(comp)
    pages = [os.path.join(comp.out, p) for p in [*results["plots"].values(), "report.html"]]
    log_report(comp.out, comp.name, comp.wandb,
               {f"report/{os.path.splitext(os.path.basename(p))[0]}": p for p in pages})
    for line in results["verdict"]:
        print(line)
    print(f"report: {os.path.join(comp.out, 'report.md')} (report.html, results.json, plots/)")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; the same command again retries them "
              f"(and resumes from their checkpoints)", file=sys.stderr)
    return (1 if failed else 0), results


# ---- suite --------------------------------------------------------------------------------------
def normalise(scores: dict[str, np.ndarray], metric: str) -> dict[str, np.ndarray]:
    """Scores of one task in [0, 1]: rates as they are, other metrics min-max over all its runs."""
    if metric in RATES:
        return scores
    values = np.concatenate(list(scores.values()))
    lo, span = values.min(), values.max() - values.min()
    return {v: (x - lo) / span if span else np.zeros_like(x) for v, x in scores.items()}


def analyse_suite(tasks: dict[str, dict], metric: str, seed: int = 0) -> dict:
    """``tasks``: {task: comparison results}. Per variant the (seeds, tasks) matrix of normalised
    final scores over the seeds that finished in every task, its aggregates, probability of
    improvement (averaged over tasks) and performance profile."""
    norm = {t: normalise(r.get("scores", {}), metric) for t, r in tasks.items()}
    variants = list(dict.fromkeys(v for r in tasks.values() for v in r["seeds"]))
    matrices, seeds = {}, {}
    for v in variants:
        by_task = [dict(zip(r["seeds"].get(v, []), norm[t].get(v, []))) for t, r in tasks.items()]
        seeds[v] = sorted(set.intersection(*(set(d) for d in by_task)))
        if seeds[v]:
            matrices[v] = np.array([[d[s] for d in by_task] for s in seeds[v]])
    taus = np.linspace(0, 1, 101)
    results = {"metric": metric, "tasks": list(tasks), "seeds": seeds, "scores": matrices,
               "aggregate": {v: stats.aggregate(m, REPS, ALPHA, seed) for v, m in matrices.items()},
               "improvement": improvement(matrices, seed), "taus": taus,
               "profiles": {v: stats.performance_profile_ci(m, taus, REPS, ALPHA, seed) for v, m in matrices.items()},
               "per_task": {t: r.get("final", {}) for t, r in tasks.items()}}
    names = list(matrices)
    poi = {(d["x"], d["y"]): d["poi"] for d in results["improvement"]}
    results["verdict"] = [verdict(names[0], v, poi[names[0], v]) for v in names[1:]]
    return results


def suite_blocks(results: dict, entries: list[str], plots: dict[str, str]) -> list[tuple]:
    tasks = results["tasks"]
    return [
        ("h1", "Suite summary"),
        ("p", f"Final {results['metric']} of every (variant, seed, task), normalised to [0, 1] per task "
              "(success rates as they are; other metrics min-max over all the task's runs). Per variant, seeds that "
              "finished in every task; 95% CIs from a bootstrap stratified by task (seeds resampled within each "
              f"task, {REPS} resamples). P(X > Y) is averaged over tasks. Tasks: {', '.join(tasks)}."),
        ("h2", "Verdict"), ("list", results["verdict"] or ["only one variant finished"]),
        ("h2", "Aggregate over tasks"),
        ("table", ["variant", "seeds", "IQM", "mean", "median"],
         [[v, len(results["seeds"][v]), ci(a["iqm"]), ci(a["mean"]), ci(a["median"])]
          for v, a in results["aggregate"].items()]),
        ("img", plots["aggregate"], "aggregate normalised scores"),
        ("table", ["X", "Y", "P(X > Y)"], [[d["x"], d["y"], ci(d["poi"], 2)] for d in results["improvement"]]),
        ("h2", "Performance profiles"),
        ("p", "Fraction of (seed, task) runs whose normalised score exceeds τ, with 95% bands."),
        ("img", plots["profiles"], "performance profiles"),
        ("h2", f"Per task: IQM of {results['metric']}"),
        ("table", ["task", *results["aggregate"], "report"],
         [[t, *[ci(results["per_task"][t].get(v, {}).get("iqm")) for v in results["aggregate"]], entry]
          for t, entry in zip(tasks, entries)]),
    ]


def write_suite_report(out: str, tasks: dict[str, dict], metric: str) -> dict:
    results = analyse_suite(tasks, metric)
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    plots = {"aggregate": "plots/aggregate.png", "profiles": "plots/profiles.png"}
    if results["aggregate"]:
        plot_intervals(results["aggregate"], os.path.join(out, plots["aggregate"]), "normalised score")
        plot_profiles(results["profiles"], results["taus"], os.path.join(out, plots["profiles"]))
        blocks = suite_blocks(results, [os.path.join(t, "report.md") for t in tasks], plots)
    else:
        blocks = [("h1", "Suite summary"), ("p", "No variant finished in every task.")]
    write_outputs(out, "suite", "suite.json", blocks, results, "rl-vf suite")
    return results


def read_suite(path: str) -> dict:
    data = read_yaml(path, "suite file")
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list) or not data["entries"]:
        raise ConfigError(f"suite file {path!r} must be a mapping with a non-empty list of 'entries'")
    for where, mapping, valid in [("the top level", data, SUITE_KEYS),
                                  *[(f"entry {i}", e, ENTRY_KEYS) for i, e in enumerate(data["entries"])]]:
        if not isinstance(mapping, dict):
            raise ConfigError(f"{where} of {path!r} must be a mapping, got {mapping!r}")
        for key in mapping:
            if key not in valid:
                raise ConfigError(f"unknown key {key!r} in {where} of {path!r}; valid keys: {', '.join(valid)}")
    for i, e in enumerate(data["entries"]):
        if "name" not in e or "env" not in e:
            raise ConfigError(f"entry {i} of {path!r} needs a name and an env")
    folders = [safe_name(str(e["name"])) for e in data["entries"]]
    if len(set(folders)) < len(folders):
        raise ConfigError(f"entry names in {path!r} must be unique (as folder names), got {', '.join(folders)}")
    variants = data.get("variants")
    if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
        raise ConfigError(f"'variants' in {path!r} must be a list of variants, e.g. [ppo, reinforce:rloo]")
    for key in ("seeds", "jobs"):
        if key in data and (type(data[key]) is not int or data[key] < 1):
            raise ConfigError(f"{key!r} in {path!r} must be an integer >= 1, got {data[key]!r}")
    return data


# ---- command line -------------------------------------------------------------------------------
def positive_jobs(jobs: int | None) -> int:
    if jobs is None:
        jobs = os.cpu_count() or 1
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    return jobs


def add_parallel_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="data-parallel processes per run (accelerate launch; 1 thread each by --threads 1; "
                        "--jobs x N processes in all; default 1)")
    p.add_argument("--fsdp", action="store_true",
                   help="shard each run's gradients and Adam's state over its processes (rl-vf train --fsdp; "
                        "needs --processes N > 1)")


def parallel_flags(args: argparse.Namespace) -> list[str]:
    """The ``rl-vf train`` flags that run each run as ``--processes`` processes (with ``--fsdp``)."""
    if args.processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {args.processes}")
    if args.fsdp and args.processes == 1:
        raise ConfigError("--fsdp shards each run over its processes: add --processes N (N > 1)")
    return (["--processes", str(args.processes)] if args.processes > 1 else []) + (["--fsdp"] if args.fsdp else [])


def cmd_compare(args: argparse.Namespace) -> int:
    env_name = args.env.split(":")[-1].replace("/", "_")
    out = args.out or os.path.join("runs", f"compare-{env_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    comp = make_comparison(out, args.env, args.env_kwargs, [v for a in args.algos for v in a.split()], args.seeds,
                           args.episodes, parse_pairs(args.set, "--set"), args.metric, args.threshold, args.wandb,
                           args.target)
    return run_comparison(comp, positive_jobs(args.jobs), parallel_flags(args))[0]


def cmd_suite(args: argparse.Namespace) -> int:
    data = read_suite(args.config)
    entries = data["entries"]
    if args.only:
        entries = [e for e in entries if e["name"] in args.only or e["env"] in args.only]
        if not entries:
            raise ConfigError(f"--only {' '.join(args.only)} matches no entry; entries: "
                              + ", ".join(f"{e['name']} ({e['env']})" for e in data["entries"]))
    out = args.out or os.path.join("runs", f"suite-{time.strftime('%Y%m%d-%H%M%S')}")
    metric = data.get("metric", "eval/success_rate")
    comps = []
    for e in entries:  # all checked before the first run starts
        try:
            comps.append(make_comparison(os.path.join(out, safe_name(e["name"])), e["env"],
                                         e.get("env_kwargs") or {}, data["variants"],
                                         data.get("seeds", 5), e.get("episodes"), e.get("set") or {}, metric,
                                         wandb=args.wandb))
        except ConfigError as err:
            raise ConfigError(f"suite entry {e['name']!r}: {err}") from None
    jobs = positive_jobs(args.jobs if args.jobs is not None else data.get("jobs"))
    parallel = parallel_flags(args)
    codes, tasks = [], {}
    for comp in comps:
        code, tasks[comp.name] = run_comparison(comp, jobs, parallel)
        codes.append(code)
    write_suite_report(out, tasks, metric)
    print(f"suite summary: {os.path.join(out, 'suite.md')} (suite.html, suite.json, plots/)")
    return max(codes)


def add_parsers(sub) -> None:
    """Add ``compare`` and ``suite`` to the subcommands of ``rl-vf``."""
    p = sub.add_parser(
        "compare", help="train every (variant, seed) on one env in parallel and write a statistical report",
        description="Train each variant with seeds 0..N-1 as `rl-vf train` processes (--threads 1 each, --jobs "
                    "at a time; output in OUT/runs/<variant>/s<seed>/train.log), then write OUT/report.md, "
                    "OUT/report.html (self-contained), OUT/results.json and OUT/plots/: final performance (IQM, "
                    "mean, median with 95% stratified-bootstrap CIs), P(X > Y) for each pair, learning curves, "
                    "episodes to a threshold, compute, and a verdict. Resumable: run the same command (same --out) "
                    "again and finished runs are skipped, interrupted ones continue from their checkpoints.",
        epilog="Variant grammar: ALGO[:BASELINE][,key=value,...], e.g. 'ppo', 'reinforce:none', "
               "'reinforce:rloo,group_size=8', 'ppo,lam=1.0' (keys as in `rl-vf train --help`, with underscores). "
               f"reinforce:rloo and reinforce:group get group_size={DEFAULT_GROUP_SIZE} unless set. Threshold: "
               "FRACTION x the best variant's final IQM of the train metric smoothed over "
               f"{SMOOTH} updates. Exit code 0 when every run finished, 1 when a run failed (the report covers "
               "the others), 2 for bad input.")
    p.add_argument("--env", required=True, help="env id (as for train)")
    p.add_argument("--env-kwargs", default="{}", metavar="JSON", help="env keyword arguments (default: {})")
    p.add_argument("--seeds", type=int, required=True, metavar="N", help="seeds 0..N-1 per variant")
    p.add_argument("--algos", nargs="+", required=True, metavar="VARIANT",
                   help="variants, space-separated (one quoted string or several arguments), "
                        "e.g. \"ppo reinforce:rloo reinforce:none\"")
    p.add_argument("--episodes", type=int, metavar="N", help="total_episodes of every run (default: the config's)")
    p.add_argument("--jobs", type=int, metavar="J", help="runs at once (default: os.cpu_count())")
    add_parallel_flags(p)
    p.add_argument("--out", metavar="DIR", help="comparison folder (default: runs/compare-<env>-<time>)")
    p.add_argument("--wandb", default="offline", choices=WANDB_MODES,
                   help="wandb mode of the runs, grouped by the comparison's name (default: offline)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (repeatable), e.g. --set lr=3e-4")
    p.add_argument("--threshold", type=float, default=0.8, metavar="FRACTION",
                   help="sample-efficiency threshold as a fraction of the best variant's final IQM (default: 0.8)")
    p.add_argument("--target", type=float, metavar="LEVEL",
                   help="sample-efficiency threshold as a fixed level of the smoothed train curve instead, e.g. 0.8 "
                        "(sampled success, as train/success_rate is)")
    p.add_argument("--metric", default=METRICS[0], choices=METRICS,
                   help="final metric from summary.json (eval/success_rate_sampled: runs whose trainer records "
                        "it); its train/ twin is the learning curve, train/success_rate for both success rates "
                        "(default: %(default)s)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "suite", help="run one comparison per entry of a YAML file and summarise across tasks",
        description="Run the comparisons of a suite file one after another (each in OUT/<entry name>/ with its own "
                    "report), then write OUT/suite.md, OUT/suite.html, OUT/suite.json and OUT/plots/: per variant "
                    "the IQM, mean and median over (seed, task) of final scores normalised to [0, 1] per task, with "
                    "95% CIs from a bootstrap stratified by task, P(X > Y) averaged over tasks, and performance "
                    "profiles. Resumable with the same --out.",
        epilog="File schema (see experiments/suite.yaml): seeds, variants, jobs, metric (optional), entries: "
               "[{name, env, env_kwargs, episodes, set: {key: value}}].")
    p.add_argument("--config", default="experiments/suite.yaml", metavar="FILE.yaml",
                   help="suite file (default: %(default)s)")
    p.add_argument("--jobs", type=int, metavar="J", help="runs at once (default: the file's jobs, else os.cpu_count())")
    add_parallel_flags(p)
    p.add_argument("--out", metavar="DIR", help="suite folder (default: runs/suite-<time>)")
    p.add_argument("--only", nargs="+", metavar="ENV", help="run only the entries with these names or env ids")
    p.add_argument("--wandb", default="offline", choices=WANDB_MODES, help="wandb mode of the runs (default: offline)")
    p.set_defaults(func=cmd_suite)
