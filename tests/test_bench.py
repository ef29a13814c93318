"""Smoke tests of experiments/bench.py (issue 6's benchmark)."""
import importlib.util
import itertools
import json
import math
import os
import re
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The values README's key table gives each placeholder.
PLACEHOLDERS = {"size": ["tiny", "10m"], "batch": ["1", "16", "64", "256"], "env": ["tictactoe", "keytodoor32"],
                "approach": ["engine", "naive"], "turns": ["1", "4", "16", "64"], "algo": ["ppo", "reinforce"]}
CURVES = {"trl_grpo_success_curve", "rl_vf_reinforce_group_success_curve"}  # lists of success rates


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "experiments", "bench.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def documented_keys(gpu: bool) -> set[str]:
    """Every JSON key docs/benchmark.md's key table documents, placeholders expanded (the "GPU only"
    ones where ``gpu``)."""
    section = open(os.path.join(ROOT, "docs", "benchmark.md")).read().split("\n## ", 1)[0]
    keys = set()
    for pattern, meaning in re.findall(r"^\| `([^`]+)` \| ([^|]*)\|", section, flags=re.M):
        if meaning.startswith("GPU only") and not gpu:
            continue
        names = re.findall(r"\{(\w+)\}", pattern)
        for values in itertools.product(*(PLACEHOLDERS[n] for n in names)):
            key = pattern
            for name, value in zip(names, values):
                key = key.replace("{" + name + "}", value, 1)
            keys.add(key)
    return keys


def test_quick_run_reports_every_documented_key(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "experiments/bench.py", "--quick", "--threads", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == figures
    assert set(figures) == documented_keys(gpu=torch.cuda.is_available())  # the bench's --device auto
    for key, value in figures.items():
        if key in CURVES:
            assert len(value) >= 2 and all(0.0 <= v <= 1.0 for v in value), (key, value)
        else:
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert "## 1. Engine decode" in proc.stdout and "## 5. Training step" in proc.stdout
    for size in PLACEHOLDERS["size"]:  # both approaches play the same episodes' shape
        keytodoor = [figures[f"keytodoor32_{approach}_turns_per_ep_{size}"] for approach in PLACEHOLDERS["approach"]]
        assert keytodoor == [34, 34]
        for approach in PLACEHOLDERS["approach"]:
            assert 3 <= figures[f"tictactoe_{approach}_turns_per_ep_{size}"] <= 5


def test_engine_and_naive_play_episodes_of_the_same_length():
    bench = load_bench()
    policy, tokenizer = bench.build(bench.SIZES["tiny"], torch.device("cpu"))
    for turns in (1, 5):
        for approach in bench.APPROACHES:
            played, _ = bench.play(approach, policy, tokenizer, bench.key_to_door(turns), 3, 5, 1, torch.device("cpu"))
            assert played == [turns] * 5, (approach, turns, played)
    games = {a: bench.play(a, policy, tokenizer, bench.tictactoe, 4, 8, 1, torch.device("cpu"))[0]
             for a in bench.APPROACHES}
    assert all(len(g) == 8 and set(g) <= {3, 4, 5} for g in games.values()), games


def test_bad_section_is_refused():
    proc = subprocess.run([sys.executable, "experiments/bench.py", "--sections", "decode,nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_a_child_peak_rss_is_its_own_not_the_bench_process():
    """Linux starts a process's peak RSS at its parent's; the bench holds models when it measures a
    training run, so the measurement must not report the bench's own size."""
    bench = load_bench()
    held = torch.ones(100_000_000)  # 400 MB in this process
    allocate = [sys.executable, "-c", "import numpy; a = numpy.ones(25_000_000); a += 1"]  # + 200 MB
    small, large = bench.child_peak_rss_mb([sys.executable, "-c", "pass"]), bench.child_peak_rss_mb(allocate)
    assert small < 100 and 200 < large < 350 and held.sum() > 0, (small, large)
