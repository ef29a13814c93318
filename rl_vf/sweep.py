"""``rl-vf sweep`` (``make study``): where a value function starts to pay.

A study file names tasks, each with a credit knob (a key of the env's arguments) and the values to
try, and the arms to compare. Every (task, knob value) is one comparison (``rl_vf.compare``: the same
runs, resume and report), all run in one pool and one wandb group; then the crossover report gives,
for each knob value and value arm, its speed-up over outcome-only REINFORCE (the first arm):

    speed-up = median over seeds of REINFORCE's episodes to the threshold
               / the same median of the arm's,

with a 95% bootstrap interval (``stats.threshold_ratio``: seeds that never reach the threshold count
as infinitely late), the same at equal generated tokens (vine's continuations are paid for), and what
the variance argument predicts (``rl_vf.theory``). Arms whose algorithm uses GAE's lambda (ppo,
vine) run once per value of ``lams``, the study's second axis. A task's ``control`` is the knob
value where no gain is expected: its intervals should hold 1.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from rl_vf import stats
from rl_vf.algos import ALGOS
from rl_vf.compare import (ALPHA, CROSSING_AXES, METRICS, REPS, TRAIN_METRICS, X_AXES, Comparison, add_parallel_flags,
                           load_runs, make_comparison, parallel_flags, positive_jobs, run_all, safe_name,
                           sample_efficiency)
from rl_vf.config import WANDB_MODES, ConfigError, make_config, read_yaml
from rl_vf.report import num, pyplot, write_outputs
from rl_vf.theory import predicted_speedup

STUDY_KEYS = ("name", "seeds", "jobs", "metric", "target", "arms", "lams", "episodes", "set", "tasks", "quick")
TASK_KEYS = ("name", "env", "env_kwargs", "knob", "values", "control", "episodes", "set", "metric", "target",
             "quick")
QUICK_KEYS = ("seeds", "values", "episodes", "arms", "lams")  # what --quick may shrink, study-wide or per task


@dataclass
class Cell:
    """One knob value of one task: a comparison of every arm."""

    task: str
    knob: str
    value: object
    control: bool
    comp: Comparison


def uses_lam(variant: str) -> bool:
    algo = ALGOS.get(variant.split(",")[0].split(":")[0])
    return algo is not None and (algo.uses_critic or algo.uses_branches)


def arm_variants(arms: list[str], lams: list[float]) -> list[str]:
    """The arms, each value arm once per lambda (``ppo,lam=0.5``); others as they are."""
    return [v for arm in arms for v in ([f"{arm},lam={lam}" for lam in lams] if uses_lam(arm) and lams else [arm])]


def read_study(path: str, quick: bool) -> dict:
    """The study file, checked, with its ``quick`` blocks applied when ``quick``."""
    data = read_yaml(path, "study file")
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise ConfigError(f"study file {path!r} must be a mapping with a non-empty list of 'tasks'")
    checks = [("the top level", data, STUDY_KEYS), ("the top-level quick block", data.get("quick", {}), QUICK_KEYS)]
    for i, t in enumerate(data["tasks"]):
        checks += [(f"task {i}", t, TASK_KEYS), (f"task {i}'s quick block", t.get("quick", {}) if isinstance(t, dict)
                                                 else {}, QUICK_KEYS)]
    for where, mapping, valid in checks:
        if not isinstance(mapping, dict):
            raise ConfigError(f"{where} of {path!r} must be a mapping, got {mapping!r}")
        for key in mapping:
            if key not in valid:
                raise ConfigError(f"unknown key {key!r} in {where} of {path!r}; valid keys: {', '.join(valid)}")
    for i, t in enumerate(data["tasks"]):
        missing = [k for k in ("name", "env", "knob", "values") if k not in t]
        if missing:
            raise ConfigError(f"task {i} of {path!r} needs {', '.join(missing)}")
        if not isinstance(t["values"], list) or not t["values"]:
            raise ConfigError(f"'values' of task {t['name']!r} in {path!r} must be a non-empty list of knob values")
    if not isinstance(data.get("arms"), list) or not data["arms"]:
        raise ConfigError(f"'arms' in {path!r} must be a list of variants, the reference first, e.g. "
                          f"[reinforce, ppo, vine]")
    if quick:
        data = {**data, **data.get("quick", {})}
        data["tasks"] = [{**t, **t.get("quick", {})} for t in data["tasks"]]
    return data


def make_cells(data: dict, out: str, wandb: str, only: list[str] | None = None) -> list[Cell]:
    """Every (task, knob value) as a checked comparison, before anything runs."""
    tasks = [t for t in data["tasks"] if not only or t["name"] in only]
    if not tasks:
        raise ConfigError(f"--only {' '.join(only)} matches no task; tasks: "
                          + ", ".join(t["name"] for t in data["tasks"]))
    variants = arm_variants(data["arms"], data.get("lams") or [])
    group = safe_name(data.get("name") or os.path.basename(os.path.normpath(out)))
    cells = []
    for t in tasks:
        for value in t["values"]:
            where = os.path.join(out, safe_name(t["name"]), safe_name(f"{t['knob']}={value}"))
            try:
                comp = make_comparison(where, t["env"], {**(t.get("env_kwargs") or {}), t["knob"]: value}, variants,
                                       t.get("seeds", data.get("seeds", 8)), t.get("episodes", data.get("episodes")),
                                       {**(data.get("set") or {}), **(t.get("set") or {})},
                                       t.get("metric", data.get("metric", METRICS[0])),
                                       target=t.get("target", data.get("target")), wandb=wandb)
            except ConfigError as e:
                raise ConfigError(f"task {t['name']!r}, {t['knob']}={value!r}: {e}") from None
            comp.group = group
            cells.append(Cell(t["name"], t["knob"], value, "control" in t and value == t["control"], comp))
    return cells


# ---- the crossover statistic --------------------------------------------------------------------
def speedup(arm: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict:
    """The reference's median first crossing over the arm's (> 1: the arm is faster), with its CI."""
    r = stats.threshold_ratio(arm, reference, REPS, ALPHA, seed)
    return {"speedup": r["ratio"], "lo": r["lo"], "hi": r["hi"],
            "never_arm": int(np.isinf(arm).sum()), "never_reference": int(np.isinf(reference).sum())}


def cell_rows(cell: Cell, seed: int = 0) -> list[dict]:
    """One row per arm of a cell (the reference left out): speed-ups on each axis and the prediction."""
    comp = cell.comp
    runs = load_runs(comp)
    done = {v: rs for v, rs in runs.items() if rs and all(r.summary is not None for r in rs)}
    ref = comp.variants[0].name
    if ref not in done:
        return []
    train_key = TRAIN_METRICS.get(comp.metric, "train/" + comp.metric.split("/", 1)[1])
    eff = sample_efficiency(done, train_key, comp.threshold, seed, comp.target)
    rows = []
    for v in comp.variants[1:]:
        if v.name not in done:
            continue
        cfg = make_config(comp.run_config(v, 0))
        row = {"task": cell.task, "knob": cell.knob, "value": cell.value, "control": cell.control, "arm": v.name,
               "level": eff["level"], "seeds": len(done[v.name]),
               "predicted": predicted_speedup(comp.env, comp.env_kwargs, cfg.algo, cfg.lam, cfg.vine_rollouts)}
        for axis in CROSSING_AXES:
            row[axis] = speedup(eff["crossings"][axis][v.name], eff["crossings"][axis][ref], seed)
        rows.append(row)
    return rows


def excludes_one(s: dict) -> bool:
    return s["lo"] > 1 or s["hi"] < 1


def findings(rows: list[dict]) -> list[str]:
    """The report's answer: per task, where a value arm is faster with a CI above 1, and the controls."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        wins = [f"{r['arm']} at {r['knob']}={r['value']} ({fmt(r['train/episodes'])})" for r in mine
                if not r["control"] and r["train/episodes"]["lo"] > 1]
        lines.append(f"{task}: faster than {mine[0]['reference']} with a CI above 1: " + ("; ".join(wins) or "none"))
        for r in mine:
            if r["control"]:
                s = r["train/episodes"]
                state = "holds 1" if not excludes_one(s) else "EXCLUDES 1"
                lines.append(f"{task} control {r['knob']}={r['value']}, {r['arm']}: {fmt(s)}, its CI {state}")
    return lines


def fmt(s: dict) -> str:
    def two(x: float) -> str:
        return num(x, "inf") if x is None or not math.isfinite(x) else f"{x:.2f}"

    return f"{two(s['speedup'])}x [{two(s['lo'])}, {two(s['hi'])}]"


# ---- the crossover report -----------------------------------------------------------------------
def plot_task(rows: list[dict], path: str) -> None:
    """Speed-up against the knob, one colour per arm, the prediction dashed; at equal episodes and
    at equal generated tokens."""
    plt = pyplot()
    values = list(dict.fromkeys(str(r["value"]) for r in rows))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, axis in zip(axes, CROSSING_AXES):
        for i, arm in enumerate(arms):
            mine = [r for r in rows if r["arm"] == arm]
            x = np.array([values.index(str(r["value"])) for r in mine]) + (i - len(arms) / 2) * 0.06
            y = np.array([clip(r[axis]["speedup"]) for r in mine])
            lo = np.array([clip(r[axis]["lo"]) for r in mine])
            hi = np.array([clip(r[axis]["hi"]) for r in mine])
            ax.errorbar(x, y, yerr=[np.maximum(y - lo, 0), np.maximum(hi - y, 0)], fmt="o-", capsize=3,
                        color=f"C{i}", label=arm)
            if axis == "train/episodes":
                pred = [r["predicted"] for r in mine]
                if all(p is not None for p in pred):
                    ax.plot(x, pred, "--", color=f"C{i}", alpha=0.7)
        ax.axhline(1.0, color="grey", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(values)), [f"{rows[0]['knob']}={v}" for v in values])
        ax.set_title(f"speed-up over {rows[0]['reference']} at equal {X_AXES[axis]}")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("speed-up (dashed: predicted)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def clip(x: float, lo: float = 1 / 64, hi: float = 64.0) -> float:
    """A speed-up drawable on a log axis: never (0) and inf at the panel's edges."""
    return float(np.clip(x, lo, hi)) if not math.isnan(x) else math.nan


def write_crossover(cells: list[Cell], out: str, seed: int = 0) -> dict:
    """OUT/crossover.md, .html, .json and plots/crossover_<task>.png from the finished runs."""
    rows = []
    for cell in cells:
        for row in cell_rows(cell, seed):
            rows.append({**row, "reference": cell.comp.variants[0].name})
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    plots = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        plots[task] = f"plots/crossover_{safe_name(task)}.png"
        plot_task([r for r in rows if r["task"] == task], os.path.join(out, plots[task]))
    blocks = [("h1", "Crossover: where a value function starts to pay"),
              ("p", "Speed-up = the reference's median episodes (or generated tokens) to the threshold over the "
                    "arm's, across seeds; > 1: the arm is faster. 95% bootstrap intervals; a seed that never reaches "
                    "the threshold counts as infinitely late. Predicted: the variance argument with a perfect "
                    "critic at the start of learning (docs/crossover.md)."),
              ("h2", "Findings"), ("list", findings(rows) or ["no finished cells yet"])]
    for task, plot in plots.items():
        mine = [r for r in rows if r["task"] == task]
        blocks += [("h2", f"{task} (threshold {mine[0]['level']:.3f})"), ("img", plot, f"crossover {task}"),
                   ("table", ["knob", "arm", "seeds", "speed-up (episodes)", "predicted", "speed-up (generated tokens)",
                              "never (arm / reference)"],
                    [[f"{r['knob']}={r['value']}" + (" (control)" if r["control"] else ""), r["arm"], r["seeds"],
                      fmt(r["train/episodes"]), num(r["predicted"]), fmt(r["perf/generated_tokens"]),
                      f"{r['train/episodes']['never_arm']} / {r['train/episodes']['never_reference']}"]
                     for r in mine])]
    results = {"rows": rows, "plots": plots, "bootstrap": {"reps": REPS, "alpha": ALPHA, "seed": seed}}
    write_outputs(out, "crossover", "crossover.json", blocks, results, "rl-vf crossover")
    return results


# ---- command line -------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    from rl_vf.compare import write_report

    data = read_study(args.config, args.quick)
    out = args.out or os.path.join("runs", safe_name(data.get("name") or "study") + ("-quick" if args.quick else ""))
    cells = make_cells(data, out, args.wandb, args.only)
    jobs = positive_jobs(args.jobs if args.jobs is not None else data.get("jobs"))
    parallel = parallel_flags(args)
    failed = [] if args.report_only else run_all([c.comp for c in cells], jobs, os.path.basename(out), parallel)
    for cell in cells:  # each cell keeps its own full comparison report
        write_report(cell.comp)
    results = write_crossover(cells, out)
    for line in findings(results["rows"]):
        print(line)
    print(f"crossover report: {os.path.join(out, 'crossover.md')} (crossover.html, crossover.json, plots/); "
          f"each cell's comparison report in {out}/<task>/<knob=value>/report.md")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}; the same command again retries them",
              file=sys.stderr)
    return 1 if failed else 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep", help="a knob x arms x seeds grid and its crossover report (make study)",
        description="Run every (task, knob value) of a study file as a comparison (rl-vf compare's runs: --threads 1 "
                    "each, --jobs at a time across the whole grid, resumable with the same --out, one wandb group), "
                    "then write OUT/crossover.md, .html, .json and plots/: for each task and knob value, each arm's "
                    "speed-up over the first arm (outcome-only REINFORCE) in episodes and in generated tokens to the "
                    "threshold, with 95% bootstrap CIs, beside the variance argument's prediction.",
        epilog="Study file schema (see experiments/study.yaml): name, seeds, jobs, metric, target, arms (the reference "
               "first), lams (lambda values for the arms that use it), episodes, set: {key: value}, quick: {seeds, "
               "episodes, arms, lams}, tasks: [{name, env, env_kwargs, knob, values, control, episodes, set, metric, "
               "target, quick: {values, seeds, episodes}}]. Exit code 0 when every run finished, 1 when a run "
               "failed (the report covers the others), 2 for bad input.")
    p.add_argument("--config", default="experiments/study.yaml", metavar="FILE.yaml",
                   help="study file (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="apply the file's quick blocks: a smaller grid, wider CIs")
    p.add_argument("--jobs", type=int, metavar="J", help="runs at once (default: the file's jobs, else os.cpu_count())")
    add_parallel_flags(p)
    p.add_argument("--out", metavar="DIR", help="study folder (default: runs/<name>[-quick])")
    p.add_argument("--only", nargs="+", metavar="TASK", help="run only these tasks (by name)")
    p.add_argument("--report-only", action="store_true", help="write the reports from the runs there, train nothing")
    p.add_argument("--wandb", default="offline", choices=WANDB_MODES, help="wandb mode of the runs (default: offline)")
    p.set_defaults(func=cmd_sweep)
