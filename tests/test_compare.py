"""rl-vf compare / suite: the runs it launches, resuming, bad input, and the report's statistics."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

import tests.toy_env  # noqa: F401  (registers PickThree-v0)
from rl_vf import compare, stats
from rl_vf.cli import main
from rl_vf.config import ConfigError
from rl_vf.metrics_log import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [f"--set={kv}" for kv in ("hidden_size=32", "layers=1", "heads=2", "intermediate_size=64", "max_action_tokens=1",
                                 "episodes_per_update=32", "eval_every=0", "final_eval_episodes=16")]


def cli(*argv) -> int:
    """``rl-vf compare|suite ...`` as the parser dispatches it (ConfigError propagates; see test_cli_exit_codes)."""
    parser = argparse.ArgumentParser()
    compare.add_parsers(parser.add_subparsers(required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_cli_exit_codes(capsys):
    assert main(["compare", "--env", "TicTacToe-v0", "--seeds", "1", "--algos", "a2c"]) == 2
    assert "unknown algo 'a2c'; choose one of: ppo, reinforce" in capsys.readouterr().err


def launches(run_dir) -> list[str]:
    """The train command lines compare wrote to a run's log, one per launch."""
    return [line for line in (run_dir / "train.log").read_text().splitlines() if line.startswith("$ ")]


def test_compare_runs_every_variant_and_seed_once_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "cmp"
    argv = ["compare", "--env", "tests.toy_env:PickThree-v0", "--seeds", 2, "--algos", "ppo reinforce:rloo",
            "--episodes", 64, "--jobs", 2, "--out", out, "--wandb", "disabled", *TINY]
    assert cli(*argv) == 0
    runs = {(v, s): out / "runs" / v / f"s{s}" for v in ("ppo", "reinforce_rloo") for s in (0, 1)}
    for run in runs.values():
        assert (run / "summary.json").exists() and len(launches(run)) == 1
    config = yaml.safe_load((runs["reinforce_rloo", 1] / "config.yaml").read_text())
    assert (config["algo"], config["baseline"], config["group_size"], config["seed"]) == ("reinforce", "rloo", 4, 1)
    assert (config["wandb_group"], config["wandb_job_type"], config["threads"]) == ("cmp", "reinforce:rloo", 1)
    for name in ("report.md", "report.html", "results.json", "plots/final.png", "plots/curves_train_success_rate.png"):
        assert (out / name).exists(), name
    assert "data:image/png;base64," in (out / "report.html").read_text()

    # The report's IQM is the IQM of the runs' own summary.json scores.
    results = json.loads((out / "results.json").read_text())
    for variant, folder in (("ppo", "ppo"), ("reinforce:rloo", "reinforce_rloo")):
        scores = [json.loads((runs[folder, s] / "summary.json").read_text())["eval/success_rate"] for s in (0, 1)]
        assert results["final"][variant]["iqm"] == pytest.approx(stats.bootstrap_ci(scores))

    assert cli(*argv) == 0  # everything finished: nothing runs again
    assert all(len(launches(run)) == 1 for run in runs.values())

    (runs["ppo", 1] / "summary.json").unlink()
    assert cli(*argv) == 0  # only that run, resumed from its last checkpoint
    assert (runs["ppo", 1] / "summary.json").exists()
    assert len(launches(runs["ppo", 1])) == 2 and "--resume" in launches(runs["ppo", 1])[1]
    assert all(len(launches(run)) == 1 for key, run in runs.items() if key != ("ppo", 1))


@pytest.mark.parametrize("variant, valid", [
    ("a2c", "choose one of: ppo, reinforce"),
    ("reinforce:median", "choose one of: none, mean, rloo, group"),
    ("ppo,learning_rate=1", "valid keys: .*lr"),
])
def test_bad_variant_is_refused_before_any_run(tmp_path, variant, valid):
    with pytest.raises(ConfigError, match=f"{variant}.*{valid}"):
        cli("compare", "--env", "TicTacToe-v0", "--seeds", 2, "--algos", f"ppo {variant}", "--out", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_verdict_claims_only_what_the_intervals_support():
    faster = {"ratio": 1.8, "lo": 1.3, "hi": 2.5, "reached_a": 1.0, "reached_b": 1.0}
    assert compare.verdict("ppo", "rf", (0.92, 0.70, 1.0), faster, 0.8) == (
        "ppo beats rf: P(ppo>rf)=0.92 [0.70, 1.00]; rf needs 1.80x the episodes of ppo to reach 0.80 [1.30, 2.50]")
    assert compare.verdict("ppo", "rf", (0.1, 0.0, 0.3)) == "rf beats ppo: P(rf>ppo)=0.90 [0.70, 1.00]"
    unclear = compare.verdict("ppo", "rf", (0.6, 0.3, 0.9), {**faster, "lo": 0.9}, 0.8)
    assert unclear.startswith("no clear difference between ppo and rf: P(ppo>rf)=0.60 [0.30, 0.90]")
    assert "beats" not in unclear and "no clear difference in episodes to reach 0.80" in unclear
    never = compare.verdict("ppo", "rf", (0.9, 0.6, 1.0), {**faster, "ratio": float("inf"), "reached_b": 0.4}, 0.8)
    assert never.endswith("0.80 reached by 100% of ppo's seeds and 40% of rf's")


def fake_run(folder, curve, score=None, tokens_per_update=1000, eval_every=0):
    """A run folder as the trainer writes it: one metrics row per update (100 episodes each) and,
    if ``score`` is given, summary.json."""
    folder.mkdir(parents=True)
    rows = []
    for t, y in enumerate(curve, 1):
        row = {"update": t, "train/episodes": 100 * t, "train/env_steps": 300 * t, "perf/generated_tokens": 600 * t,
               "perf/trained_tokens": tokens_per_update * t, "perf/wall_s": 2.0 * t, "train/success_rate": y}
        if eval_every and t % eval_every == 0:
            row["eval/success_rate"] = y
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if score is not None:
        (folder / "summary.json").write_text(json.dumps({"eval/success_rate": score, "eval/return_mean": score}))


def step_curve(start: int, updates: int = 20) -> list[float]:
    """Success 0 before update ``start``, 1 from it on: the 3-update running mean first reaches
    0.8 (it is 1) at update start + 2."""
    return [float(t >= start) for t in range(1, updates + 1)]


def synthetic_comparison(out, ppo_scores, rf_scores, rf_tokens=1000) -> compare.Comparison:
    """ppo switches on at update seed + 2; reinforce:none at 3 * seed + 7 (seed 3 never; seed 4 did not finish)."""
    comp = compare.Comparison(str(out), "tests.toy_env:PickThree-v0", {},
                              [compare.parse_variant("ppo", {}), compare.parse_variant("reinforce:none", {})],
                              list(range(5)), {})
    for s in range(5):
        fake_run(out / "runs" / "ppo" / f"s{s}", step_curve(s + 2), ppo_scores[s], eval_every=2)
        fake_run(out / "runs" / "reinforce_none" / f"s{s}", step_curve(99 if s == 3 else 3 * s + 7),
                 rf_scores[s] if s < 4 else None, tokens_per_update=rf_tokens)
    return comp


def test_report_statistics_from_synthetic_runs(tmp_path):
    ppo, rf = [0.9, 0.95, 0.85, 1.0, 0.92], [0.5, 0.6, 0.4, 0.55]
    comp = synthetic_comparison(tmp_path, ppo, rf + [None], rf_tokens=800)
    results = compare.write_report(comp)

    assert results["missing"] == {"ppo": [], "reinforce:none": [4]}
    assert results["final"]["ppo"]["iqm"] == pytest.approx(stats.bootstrap_ci(ppo))
    assert results["final"]["reinforce:none"]["median"] == pytest.approx(stats.bootstrap_ci(rf, np.median))
    assert results["improvement"][0]["poi"][0] == 1.0  # every ppo seed beats every reinforce seed
    assert results["verdict"][0].startswith("ppo beats reinforce:none: P(ppo>reinforce:none)=1.00")

    eff = results["sample_efficiency"]
    assert eff["best_variant"] == "ppo" and eff["level"] == pytest.approx(0.8)  # final smoothed curves are 1
    assert list(eff["crossings"]["train/episodes"]["ppo"]) == [100 * (s + 4) for s in range(5)]
    assert list(eff["crossings"]["train/episodes"]["reinforce:none"]) == [900, 1200, 1500, np.inf]
    assert list(eff["crossings"]["perf/generated_tokens"]["ppo"]) == [600 * (s + 4) for s in range(5)]
    ratio = eff["ratios"]["train/episodes"]["reinforce:none"]
    assert ratio["ratio"] == pytest.approx(1350 / 600) and ratio["reached_b"] == 0.75
    assert "reinforce:none needs 2.25x the episodes of ppo" in results["verdict"][0]

    cost = results["compute"]
    assert cost["budget"] == 16000  # reinforce: 20 updates x 800 trained tokens
    assert cost["means"]["reinforce:none"]["perf/trained_tokens"] == 16000
    assert cost["at_budget"]["ppo"]["iqm"][0] == 1.0  # every ppo curve is 1 by update 16
    assert set(results["curves"]) == {"train/success_rate", "eval/success_rate"}
    band = results["curves"]["train/success_rate"]["train/episodes"]["ppo"]
    assert band["iqm"][0] == 0 and band["iqm"][-1] == 1 and np.all(band["lo"] <= band["iqm"])

    md = (tmp_path / "report.md").read_text()
    assert "reinforce:none s4" in md and "| never |" in md and "ppo beats reinforce:none" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sample_efficiency"]["crossings"]["train/episodes"]["reinforce:none"][3] is None  # never
    assert saved["final"]["ppo"]["iqm"] == pytest.approx(list(stats.bootstrap_ci(ppo)))
    for name in ("final", "curves_train_success_rate", "curves_eval_success_rate"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000


def test_no_clear_difference_when_the_runs_overlap(tmp_path):
    comp = synthetic_comparison(tmp_path, [0.5, 0.7, 0.6, 0.4, 0.55], [0.6, 0.45, 0.65, 0.5])
    results = compare.write_report(comp)
    p, lo, hi = results["improvement"][0]["poi"]
    assert lo < 0.5 < hi
    assert results["verdict"][0].startswith("no clear difference between ppo and reinforce:none")


def test_failed_run_is_reported_and_the_report_covers_the_others(tmp_path, monkeypatch, capsys):
    comp = synthetic_comparison(tmp_path, [0.9, 0.95, 0.85, 1.0, 0.92], [0.5, 0.6, 0.4, 0.55, None])
    launched = []

    def failing_launch(comp, variant, seed, parallel):
        launched.append((variant.name, seed))
        log = tmp_path / "runs" / variant.folder / f"s{seed}" / "train.log"
        log.write_text("Traceback ...\nRuntimeError: boom\n")
        return 1, 0.5

    monkeypatch.setattr(compare, "launch", failing_launch)
    code, results = compare.run_comparison(comp, jobs=2)
    assert code == 1 and launched == [("reinforce:none", 4)]  # only the run without summary.json
    shown = capsys.readouterr().out
    assert "reinforce:none s4: FAILED (exit 1)" in shown and "RuntimeError: boom" in shown
    assert results["missing"]["reinforce:none"] == [4] and results["final"]["reinforce:none"]["iqm"]
    assert "reinforce:none s4" in (tmp_path / "report.md").read_text()


def test_suite_summary_normalises_and_stratifies_over_tasks(tmp_path):
    tasks = {}
    for name, ppo, rf in (("a", [0.9, 0.8, 1.0, 0.7, 0.9], [0.1, 0.2, 0.3, 0.2]),
                          ("b", [0.3, 0.4, 0.25, 0.5, 0.4], [0.1, 0.0, 0.1, 0.2])):
        tasks[name] = compare.write_report(synthetic_comparison(tmp_path / name, ppo, rf + [None]))
    results = compare.write_suite_report(str(tmp_path), tasks, "eval/success_rate")
    assert results["seeds"] == {"ppo": [0, 1, 2, 3, 4], "reinforce:none": [0, 1, 2, 3]}  # s4 missing in both
    matrix = np.array([[0.9, 0.3], [0.8, 0.4], [1.0, 0.25], [0.7, 0.5], [0.9, 0.4]])
    assert results["aggregate"]["ppo"]["iqm"] == pytest.approx(stats.bootstrap_ci(matrix))
    assert results["improvement"][0]["poi"][0] == 1.0
    assert results["verdict"] == ["ppo beats reinforce:none: P(ppo>reinforce:none)=1.00 [1.00, 1.00]"]
    for name in ("suite.md", "suite.html", "suite.json", "plots/profiles.png", "plots/aggregate.png"):
        assert (tmp_path / name).exists(), name
    # Returns are min-max scaled over all of a task's runs.
    scaled = compare.normalise({"x": np.array([-1.0, 1.0]), "y": np.array([0.0])}, "eval/return_mean")
    assert list(scaled["x"]) == [0.0, 1.0] and list(scaled["y"]) == [0.5]


def test_shipped_suite_file_is_valid(tmp_path):
    data = compare.read_suite(os.path.join(ROOT, "experiments", "suite.yaml"))
    names = [e["name"] for e in data["entries"]]
    assert len(set(names)) == len(names) == 5
    for e in data["entries"]:
        comp = compare.make_comparison(str(tmp_path / e["name"]), e["env"], e.get("env_kwargs") or {},
                                       data["variants"], data["seeds"], e.get("episodes"), e.get("set") or {})
        assert [v.name for v in comp.variants] == ["ppo", "reinforce", "reinforce:rloo"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"variants": ["ppo"], "entries": [{"name": "t", "env": "TicTacToe-v0",
                                                                     "episodes": 10, "lr": 1}]}))
    with pytest.raises(ConfigError, match="unknown key 'lr' in entry 0.*valid keys: name, env"):
        cli("suite", "--config", bad)


def test_no_run_reaches_a_threshold_of_zero():
    """When every run stays at 0 the threshold is 0; no run may count as reaching it at the first update."""
    rows = [{"train/episodes": 100 * (i + 1), "train/env_steps": 300 * (i + 1), "perf/generated_tokens": 900 * (i + 1),
             "train/success_rate": 0.0} for i in range(6)]
    done = {v: [compare.Run(seed=s, summary={}, rows=rows) for s in range(3)] for v in ("ppo", "reinforce")}
    eff = compare.sample_efficiency(done, "train/success_rate", 0.8)
    assert eff["level"] == 0
    assert all(np.isinf(c).all() for axis in eff["crossings"].values() for c in axis.values())


def test_a_fixed_target_replaces_the_fraction_of_the_best():
    """--target: every run is timed to the same fixed level, whatever the best variant reached."""
    def rows(curve):
        return [{"train/episodes": 100 * (i + 1), "train/env_steps": 300 * (i + 1),
                 "perf/generated_tokens": 900 * (i + 1), "train/success_rate": x} for i, x in enumerate(curve)]

    slow, fast = [0.1, 0.3, 0.5, 0.7, 0.85, 0.9, 0.9], [0.5, 0.8, 0.9, 0.95, 0.95, 0.95, 0.95]
    done = {"a": [compare.Run(seed=0, summary={}, rows=rows(slow))], "b": [compare.Run(seed=0, summary={}, rows=rows(fast))]}
    fraction = compare.sample_efficiency(done, "train/success_rate", 0.5)
    fixed = compare.sample_efficiency(done, "train/success_rate", 0.5, target=0.8)
    assert fraction["level"] == pytest.approx(0.5 * 0.95) and fixed["level"] == 0.8
    # The smoothed curves (3-update means) of b and a first reach 0.8 at updates 4 and 6.
    assert fixed["crossings"]["train/episodes"]["b"][0] == 400 and fixed["crossings"]["train/episodes"]["a"][0] == 600


def test_a_metric_saturated_for_every_variant_is_flagged(tmp_path):
    """Every run at >= 0.99: the report says the final metric cannot separate the variants."""
    results = compare.write_report(synthetic_comparison(tmp_path / "all", [1.0] * 5, [1.0, 0.995, 1.0, 1.0, None]))
    assert results["saturated"]
    md = (tmp_path / "all" / "report.md").read_text()
    final = md.split("## Final performance")[1].split("## Learning curves")[0]
    assert "Saturated: every run of every variant has eval/success_rate >= 0.99 (its ceiling)" in final
    assert "sample efficiency" in final and "--metric eval/success_rate_sampled" in final

    # One run below the ceiling (0.98) and the metric separates again: no such line.
    results = compare.write_report(synthetic_comparison(tmp_path / "one", [1.0] * 5, [1.0, 0.98, 1.0, 1.0, None]))
    assert not results["saturated"]
    assert "Saturated" not in (tmp_path / "one" / "report.md").read_text()
    # Returns have no known ceiling: never saturated.
    assert not compare.saturated({"ppo": np.array([1.0, 1.0])}, "eval/return_mean")


def test_the_sampled_success_rate_is_a_metric_with_the_train_success_curve(tmp_path):
    assert compare.make_comparison(str(tmp_path / "c"), "TicTacToe-v0", {}, ["ppo"], 1,
                                   metric="eval/success_rate_sampled").metric == "eval/success_rate_sampled"
    comp = synthetic_comparison(tmp_path, [0.9, 0.95, 0.85, 1.0, 0.92], [0.5, 0.6, 0.4, 0.55, None])
    comp.metric = "eval/success_rate_sampled"
    with pytest.raises(ConfigError, match="eval/success_rate_sampled is not in the summary.json of ppo s0, ppo s1"):
        compare.write_report(comp)  # runs from a trainer that did not record it
    for path in tmp_path.glob("runs/*/*/summary.json"):
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({**summary, "eval/success_rate_sampled": summary["eval/success_rate"] / 2}))
    results = compare.write_report(comp)
    assert results["train_metric"] == "train/success_rate" and not results["saturated"]
    assert results["final"]["ppo"]["iqm"] == pytest.approx(stats.bootstrap_ci([0.45, 0.475, 0.425, 0.5, 0.46]))
    assert "Final performance (eval/success_rate_sampled" in (tmp_path / "report.md").read_text()


def test_a_one_update_budget_where_nothing_learned_says_so_first(tmp_path):
    """What a user sees first after a compare too short to learn: the reason, not blank panels."""
    comp = synthetic_comparison(tmp_path, [0.0] * 5, [0.0] * 5)
    for s in range(5):  # every run: one update, success 0
        for v in ("ppo", "reinforce_none"):
            shutil.rmtree(tmp_path / "runs" / v / f"s{s}")
            fake_run(tmp_path / "runs" / v / f"s{s}", [0.0], 0.0)
    results = compare.write_report(comp)
    assert results["updates_per_run"] == [1, 1]
    assert results["verdict"][0].startswith("nothing learned: no run's train/success_rate (smoothed over 3 updates) "
                                            "rose above 0 in 1 update per run")
    assert results["verdict"][1].startswith("one point per run: every run made 1 update")
    assert "reached by" not in results["verdict"][2]  # no threshold statistic on a threshold of 0
    md = (tmp_path / "report.md").read_text()
    assert "No curves: every run has a single update" in md
    assert not list((tmp_path / "plots").glob("curves_*.png"))


def test_every_run_left_out_at_equal_compute_is_named_with_the_reason(tmp_path):
    """ppo s0 and s1 train 5000 tokens per update, so their first smoothed point (after 3 updates) lies at
    15000 tokens, past the budget of 10000 (ppo s2-s4: 20 updates x 500): they have no value there."""
    comp = synthetic_comparison(tmp_path, [0.9] * 5, [0.5] * 4 + [None])
    for s in range(5):
        shutil.rmtree(tmp_path / "runs" / "ppo" / f"s{s}")
        fake_run(tmp_path / "runs" / "ppo" / f"s{s}", step_curve(s + 2), 0.9, tokens_per_update=5000 if s < 2 else 500)
    results = compare.write_report(comp)
    at = results["compute"]["at_budget"]
    assert results["compute"]["budget"] == 10000  # ppo s2-s4: 20 updates x 500 tokens
    assert at["ppo"]["left_out"] == [0, 1] and at["ppo"]["n"] == 3  # their first smoothed point is at 15000
    assert at["reinforce:none"]["left_out"] == [] and at["reinforce:none"]["n"] == 4
    md = (tmp_path / "report.md").read_text()
    assert "| s0, s1 |" in md and "Left out: runs whose first smoothed point" in md


def test_a_forked_run_equals_the_same_run_as_a_fresh_subprocess(tmp_path, monkeypatch):
    """compare forks each run from a preloaded server: same exit code, same numbers as python -m rl_vf."""
    monkeypatch.chdir(ROOT)
    comp = compare.make_comparison(str(tmp_path / "cmp"), "tests.toy_env:PickThree-v0", {}, ["reinforce:rloo"], 1, 64,
                                   sets={"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64,
                                         "max_action_tokens": 1, "episodes_per_update": 32, "num_envs": 32,
                                         "final_eval_episodes": 16}, wandb="disabled")
    variant = comp.variants[0]
    code, _ = compare.launch(comp, variant, 0)
    forked = comp.run_dir(variant, 0)
    assert code == 0 and compare.finished(forked)
    fresh = tmp_path / "fresh"
    argv = compare.train_command({**comp.run_config(variant, 0), "out": str(fresh)}, None)
    subprocess.run([sys.executable, "-m", "rl_vf", *argv], check=True, capture_output=True)
    rows = [[{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(os.path.join(d, "metrics.jsonl"))]
            for d in (forked, fresh)]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    summaries = [json.loads(open(os.path.join(d, "summary.json")).read()) for d in (forked, fresh)]
    assert summaries[0]["eval/success_rate"] == summaries[1]["eval/success_rate"]

    missing = str(tmp_path / "no-model")
    bad = compare.Comparison(str(tmp_path / "bad"), "tests.toy_env:PickThree-v0", {}, [compare.parse_variant("ppo", {})],
                             [0], {"model": missing, "wandb": "disabled"})
    assert compare.launch(bad, bad.variants[0], 0)[0] == 2  # the child's exit code comes back
    assert "cannot load model" in open(os.path.join(bad.run_dir(bad.variants[0], 0), "train.log")).read()


def test_an_env_without_success_is_reported_on_its_return(tmp_path, monkeypatch):
    """No success flag in the env's info: no success rate anywhere (not a rate of 0.0), and the
    comparison's default metric becomes the mean return."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "cmp"
    assert cli("compare", "--env", "tests.toy_env:PickThree-v0", "--env-kwargs", '{"success_key": null}', "--seeds", 1,
               "--algos", "reinforce", "--episodes", 64, "--jobs", 1, "--out", out, "--wandb", "disabled", *TINY) == 0
    run = out / "runs" / "reinforce" / "s0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    assert rows and not any("train/success_rate" in r for r in rows) and "train/return_mean" in rows[0]
    assert not any("success" in k for k in summary) and "eval/return_mean_sampled" in summary
    assert json.loads((out / "results.json").read_text())["metric"] == "eval/return_mean"


@pytest.mark.parametrize("info,flag", [({"success": True}, True), ({"is_success": 0}, False), ({}, None)])
def test_success_comes_from_success_or_sb3s_is_success(info, flag):
    from rl_vf.engine import success_flag

    assert success_flag(info) is flag


def test_parallel_flags_run_each_run_on_its_processes_sharded_or_not():
    def flags(processes, fsdp=False):
        return compare.parallel_flags(argparse.Namespace(processes=processes, fsdp=fsdp))

    assert flags(1) == [] and flags(2) == ["--processes", "2"] and flags(4, True) == ["--processes", "4", "--fsdp"]
    with pytest.raises(ConfigError, match="--fsdp shards each run over its processes: add --processes N"):
        flags(1, True)
    with pytest.raises(ConfigError, match="--processes must be >= 1, got 0"):
        flags(0)
