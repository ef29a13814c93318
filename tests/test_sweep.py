"""rl-vf sweep: the study file, the crossover statistic on runs with a known speed-up, the
variance argument's predictions, and one tiny sweep end to end."""
import argparse
import json
import os
from pathlib import Path

import pytest
import yaml

import tests.toy_env  # noqa: F401  (registers PickThree-v0)
from rl_vf import sweep
from rl_vf.config import ConfigError
from rl_vf.theory import predicted_speedup
from tests.test_compare import TINY, fake_run, step_curve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    sweep.add_parser(parser.add_subparsers(required=True))
    args = parser.parse_args(["sweep", *map(str, argv)])
    return args.func(args)


def write_study(path, **overrides) -> str:
    study = {"name": "st", "seeds": 4, "arms": ["reinforce", "ppo"], "lams": [0.5],
             "tasks": [{"name": "k2d", "env": "KeyToDoor-v0", "knob": "delay", "values": [0, 4], "control": 0}]}
    study.update(overrides)
    path.write_text(yaml.safe_dump(study))
    return str(path)


# ---- the variance argument ----------------------------------------------------------------------
def test_predictions_hold_one_at_the_controls_and_match_hand_computed_cases():
    for env, kwargs in [("Decisions-v0", {"n": 1}), ("Decisions-v0", {"n": 8, "feedback": False}),
                        ("KeyToDoor-v0", {"delay": 16, "distractor_reward_std": 0.0}), ("DoomedStep-v0", {"length": 1})]:
        for lam in (0.5, 0.95):
            assert predicted_speedup(env, kwargs, "ppo", lam) == pytest.approx(1.0), (env, kwargs, lam)
    # KeyToDoor: REINFORCE's advantage variance 1/4 + D sigma^2 against 1/4 + sigma^2 sum_{i=1..D} lambda^(2i).
    lam2 = 0.95**2
    gae = 0.25 + sum(lam2**i for i in range(1, 17))
    assert predicted_speedup("KeyToDoor-v0", {"delay": 16, "distractor_reward_std": 1.0}, "ppo", 0.95) == \
        pytest.approx(16.25 / gae)
    # ... and K = 4 continuations add the return's variance over 4 at the key turn.
    assert predicted_speedup("KeyToDoor-v0", {"delay": 16, "distractor_reward_std": 1.0}, "vine", 0.95, 4) == \
        pytest.approx(16.25 / (gae + 16.25 / 4))
    # Decisions with lambda 1: a per-state baseline removes the past decisions' noise, 2N / (N + 1).
    for n in (2, 8):
        assert predicted_speedup("Decisions-v0", {"n": n}, "ppo", 1.0) == pytest.approx(2 * n / (n + 1))
    # The gain grows with the number of decisions, and faster for a smaller lambda.
    gains = [predicted_speedup("Decisions-v0", {"n": n}, "ppo", 0.5) for n in (1, 2, 4, 8, 16)]
    assert gains == sorted(gains) and gains[-1] > 10
    assert predicted_speedup("reinforce", {}, "ppo") is None  # no model for an unknown env


# ---- the study file -----------------------------------------------------------------------------
def test_value_arms_run_once_per_lambda():
    assert sweep.arm_variants(["reinforce", "reinforce:rloo", "ppo", "vine,vine_rollouts=2"], [0.5, 0.95]) == [
        "reinforce", "reinforce:rloo", "ppo,lam=0.5", "ppo,lam=0.95", "vine,vine_rollouts=2,lam=0.5",
        "vine,vine_rollouts=2,lam=0.95"]
    assert sweep.arm_variants(["reinforce", "ppo"], []) == ["reinforce", "ppo"]


@pytest.mark.parametrize("overrides, message", [
    ({"tasks": [{"name": "x", "env": "KeyToDoor-v0", "knob": "delay", "values": [1], "seed": 3}]},
     "unknown key 'seed' in task 0"),
    ({"tasks": [{"name": "x", "env": "KeyToDoor-v0", "values": [1]}]}, "task 0 of .* needs knob"),
    ({"arms": []}, "'arms' in .* must be a list"),
    ({"quick": {"seed": 1}}, "unknown key 'seed' in the top-level quick block"),
    ({"tasks": [{"name": "x", "env": "KeyToDoor-v0", "knob": "delay", "values": [-1]}]},
     "task 'x', delay=-1: .*delay=-1 is not valid"),
])
def test_bad_study_files_are_refused_naming_the_problem(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        data = sweep.read_study(write_study(tmp_path / "s.yaml", **overrides), quick=False)
        sweep.make_cells(data, str(tmp_path / "out"), "disabled")


def test_shipped_study_file_is_valid_in_both_sizes(tmp_path):
    for quick in (False, True):
        data = sweep.read_study(os.path.join(ROOT, "experiments", "study.yaml"), quick)
        cells = sweep.make_cells(data, str(tmp_path / "study"), "disabled")
        tasks = {c.task for c in cells}
        assert {"decisions", "key_to_door", "doomed_step"} <= tasks
        assert all(any(c.control for c in cells if c.task == t) for t in tasks), "every task needs its control"
        assert cells[0].comp.variants[0].name == "reinforce"
    data = sweep.read_study(os.path.join(ROOT, "experiments", "decision_signal.yaml"), False)
    assert len(sweep.make_cells(data, str(tmp_path / "signal"), "disabled")) == 3


# ---- the crossover statistic --------------------------------------------------------------------
def fake_cell(cell, reference_start, arm_start):
    """Runs whose smoothed success crosses 0.8 at update start + 2 (ppo at ``arm_start(seed)``)."""
    for variant, start in zip(cell.comp.variants, (reference_start, arm_start)):
        for s in cell.comp.seeds:
            fake_run(Path(cell.comp.run_dir(variant, s)), step_curve(start(s), updates=40), score=1.0)


def test_crossover_statistic_recovers_a_known_speed_up(tmp_path):
    data = sweep.read_study(write_study(tmp_path / "s.yaml", target=0.8), quick=False)
    cells = sweep.make_cells(data, str(tmp_path / "out"), "disabled")
    control, delayed = cells
    # Control: both arms cross at the same updates. Delay 4: reinforce crosses at 2(s + 4) + 2 updates
    # (even), ppo at s + 6: medians over seeds 0-3 are 13 and 7.5 updates, a speed-up of 13 / 7.5.
    fake_cell(control, lambda s: s + 4, lambda s: s + 4)
    fake_cell(delayed, lambda s: 2 * (s + 4), lambda s: s + 4)
    results = sweep.write_crossover(cells, str(tmp_path / "out"))
    rows = {(r["value"], r["arm"]): r for r in results["rows"]}
    same, faster = rows[0, "ppo,lam=0.5"], rows[4, "ppo,lam=0.5"]
    assert same["control"] and same["train/episodes"]["speedup"] == pytest.approx(1.0)
    assert same["train/episodes"]["lo"] <= 1 <= same["train/episodes"]["hi"]
    assert faster["train/episodes"]["speedup"] == pytest.approx(13 / 7.5)
    assert faster["train/episodes"]["lo"] > 1 and faster["perf/generated_tokens"]["speedup"] == pytest.approx(13 / 7.5)
    assert faster["predicted"] == pytest.approx(1.0)  # no distractor noise: nothing to gain in theory
    lines = sweep.findings(results["rows"])
    assert lines[0].startswith("k2d: faster than reinforce with a CI above 1: ppo,lam=0.5 at delay=4 (1.73x")
    assert "k2d control delay=0, ppo,lam=0.5: 1.00x" in lines[1] and lines[1].endswith("its CI holds 1")
    md = (tmp_path / "out" / "crossover.md").read_text()
    assert "delay=0 (control)" in md and (tmp_path / "out" / "plots" / "crossover_k2d.png").stat().st_size > 1000


def test_a_seed_that_never_gets_there_is_counted_not_dropped(tmp_path):
    data = sweep.read_study(write_study(tmp_path / "s.yaml", target=0.8), quick=False)
    _, cell = sweep.make_cells(data, str(tmp_path / "out"), "disabled")
    fake_cell(cell, lambda s: 99 if s == 0 else s + 4, lambda s: s + 4)
    (row,) = sweep.cell_rows(cell)
    assert row["train/episodes"]["never_reference"] == 1 and row["train/episodes"]["never_arm"] == 0
    # reinforce crosses at updates never, 7, 8, 9 (median 8.5, the never counted as the latest); ppo at 6-9.
    assert row["train/episodes"]["speedup"] == pytest.approx(8.5 / 7.5)


# ---- end to end ---------------------------------------------------------------------------------
def test_a_tiny_sweep_runs_every_cell_once_in_one_group_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    sets = dict(kv.removeprefix("--set=").split("=") for kv in TINY)
    study = write_study(tmp_path / "s.yaml", seeds=2, episodes=64, set=sets, target=0.5,
                        tasks=[{"name": "pick", "env": "tests.toy_env:PickThree-v0", "knob": "target",
                                "values": ["3", "5"], "control": "3"}])
    out = tmp_path / "out"
    assert cli("--config", study, "--out", out, "--jobs", 2, "--wandb", "disabled") == 0
    run = out / "pick" / "target=5" / "runs" / "ppo_lam=0.5" / "s1"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["lam"], config["wandb_group"], config["env_kwargs"], config["critic"]) == (0.5, "st", {"target": "5"},
                                                                                          "separate")
    assert (out / "pick" / "target=3" / "report.md").exists()
    results = json.loads((out / "crossover.json").read_text())
    assert [(r["value"], r["arm"]) for r in results["rows"]] == [("3", "ppo,lam=0.5"), ("5", "ppo,lam=0.5")]
    logs = [(run.parent / f"s{s}" / "train.log").read_text().count("$ ") for s in (0, 1)]
    assert cli("--config", study, "--out", out, "--jobs", 2, "--wandb", "disabled") == 0
    assert [(run.parent / f"s{s}" / "train.log").read_text().count("$ ") for s in (0, 1)] == logs == [1, 1]
