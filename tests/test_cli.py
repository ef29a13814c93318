"""The real command line: learning, exact resume, run folder contents, and bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import envs
from rl_vf.cli import main
from rl_vf.config import DEFAULT_RUN_TIME, ENV_DEFAULTS, make_config
from rl_vf.metrics_log import read_metrics
from rl_vf.policy import load_policy
from rl_vf.trainer import update_sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64", "--threads", "1"]


def test_cli_learns_a_tiny_task(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rl_vf", "train", "--env", "tests.toy_env:PickThree-v0", "--algo", "ppo",
           "--total-episodes", "1536", "--episodes-per-update", "128", "--max-action-tokens", "1",
           "--lr", "3e-3", "--eval-every", "0", "--final-eval-episodes", "200", "--out", str(out),
           "--wandb", "offline", *SMALL]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_metrics(out / "metrics.jsonl")
    first, last = rows[0]["train/return_mean"], rows[-1]["train/return_mean"]
    assert first < 0.3 and last > 0.8, (first, last)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval/success_rate"] > 0.8 and summary["eval/episodes"] == 200
    # The run folder a user gets.
    assert (out / "config.yaml").exists() and (out / "eval_samples.jsonl").exists()
    assert (out / "checkpoints" / "final" / "value_head.safetensors").exists()
    assert any(p.startswith("offline-run") for p in os.listdir(out / "wandb"))
    for key in ("train/episodes", "train/success_rate", "train/invalid_action_rate", "loss/pg", "loss/vf",
                "loss/entropy", "ppo/clipfrac", "ppo/approx_kl", "value/explained_variance",
                "perf/rollout_tokens_per_s", "perf/update_tokens_per_s", "perf/wall_s"):
        assert key in rows[-1], key


def ttt_args(out, episodes, algo="ppo"):
    return ["train", "--env", "TicTacToe-v0", "--algo", algo, "--seed", "3", "--total-episodes", str(episodes),
            "--episodes-per-update", "32", "--num-envs", "16", "--minibatch-size", "16", "--epochs", "2",
            "--eval-every", "2", "--eval-episodes", "16", "--final-eval-episodes", "16", "--checkpoint-every", "1",
            "--kl-coef", "0.05", "--lr-schedule", "constant", "--out", str(out), "--wandb", "disabled", *SMALL]


def comparable(run):
    """A run's metrics rows without the perf/* timings, which differ between any two runs."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(run / "metrics.jsonl")]


@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
def test_resume_is_exact(tmp_path, algo):
    assert main(ttt_args(tmp_path / "straight", 128, algo)) == 0
    assert main(ttt_args(tmp_path / "split", 64, algo)) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--total-episodes", "128"]) == 0
    straight, split = comparable(tmp_path / "straight"), comparable(tmp_path / "split")
    assert len(straight) == 4 and split == straight
    a, _ = load_policy(str(tmp_path / "straight" / "checkpoints" / "final"))
    b, _ = load_policy(str(tmp_path / "split" / "checkpoints" / "final"))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_resume_refuses_to_change_what_the_checkpoints_belong_to(tmp_path, capsys):
    assert main(ttt_args(tmp_path / "run", 32)) == 0
    assert main(["train", "--resume", str(tmp_path / "run"), "--critic", "shared", "--layers", "3"]) == 2
    err = capsys.readouterr().err
    assert "critic='separate' (asked: 'shared'), layers=1 (asked: 3)" in err and "Traceback" not in err


def test_crash_resume_with_linear_lr_is_exact(tmp_path):
    """A run killed after update 3 and resumed replays update 4 exactly, decayed lr included.

    (test_resume_is_exact extends a finished run, so it needs the constant schedule.)
    """
    args = ttt_args(tmp_path / "straight", 128) + ["--lr", "1e-3", "--lr-schedule", "linear"]
    assert main(args) == 0
    straight = comparable(tmp_path / "straight")
    assert [r["train/lr"] for r in straight] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "straight", crashed)
    for name in ("checkpoints/update_000004", "checkpoints/final"):
        shutil.rmtree(crashed / name)
    (crashed / "summary.json").unlink()
    assert main(["train", "--resume", str(crashed)]) == 0
    assert comparable(crashed) == straight


def test_env_defaults_sit_between_the_defaults_and_the_user(tmp_path, capsys):
    assert make_config({"env": "ConnectFour-v0"}).total_episodes == ENV_DEFAULTS["ConnectFour-v0"]["total_episodes"]
    assert make_config({}).total_episodes == 60_000
    assert make_config({"env": "ConnectFour-v0"}, {"total_episodes": 100}).total_episodes == 100
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"ConnectFour-v0 ({DEFAULT_RUN_TIME['ConnectFour-v0']}): total_episodes=10240" in shown
    for env_id in envs.ENV_IDS:  # every env, with the time a whole default run takes
        assert f"{env_id} ({DEFAULT_RUN_TIME[env_id]}):" in shown


def test_env_kwargs_go_key_by_key_over_the_envs_own():
    assert make_config({"env": "ChessEndgame-v0"}).env_kwargs == {"compact": True}
    assert make_config({"env": "ChessEndgame-v0", "env_kwargs": {"material": "KRK"}}).env_kwargs == \
        {"compact": True, "material": "KRK"}
    assert make_config({"env": "ChessEndgame-v0", "env_kwargs": {"compact": False}}).env_kwargs == {"compact": False}


def test_eval_command_reads_a_run(tmp_path, capsys):
    assert main(ttt_args(tmp_path / "run", 32)) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["env"] == "TicTacToe-v0" and result["eval/episodes"] == 20
    lo, hi = result["eval/success_rate_ci95"]
    assert 0 <= lo <= result["eval/success_rate"] <= hi <= 1 and hi - lo > 0.1  # 20 episodes: a wide interval


def test_eval_against_pairs_the_same_episodes(tmp_path, capsys):
    # A warm start that always picks "3" against an untrained policy, on the same 60 episodes.
    warm = tmp_path / "warm"
    assert main(["pretrain", "--env", "tests.toy_env:PickThree-v0", "--demos", "256", "--expert-prob", "1",
                 "--minibatch-size", "32", "--final-eval-episodes", "10", "--out", str(warm), *SMALL]) == 0
    untrained = tmp_path / "untrained"
    assert main(["pretrain", "--env", "tests.toy_env:PickThree-v0", "--demos", "1", "--warm-start-epochs", "1",
                 "--warm-start-lr", "1e-9", "--final-eval-episodes", "10", "--out", str(untrained), *SMALL]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(warm), "--against", str(untrained), "--episodes", "60",
                 "--no-greedy"]) == 0
    r = json.loads(capsys.readouterr().out)
    a, b = r["eval/success_rate"], r["against/eval/success_rate"]
    assert a > 0.9 and b < 0.5 and r["against"].startswith(str(untrained))
    assert r["paired/success_diff"] == pytest.approx(a - b)
    assert r["paired/only_checkpoint"] - r["paired/only_against"] == round((a - b) * 60)
    lo, hi = r["paired/success_diff_ci95"]
    assert 0.3 < lo <= a - b <= hi <= 1
    # A policy against itself: every episode the same (sampling is seeded), a zero-width interval at 0.
    assert main(["eval", "--checkpoint", str(warm), "--against", str(warm), "--episodes", "30", "--no-greedy"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["paired/success_diff"] == 0 and r["paired/success_diff_ci95"] == [0, 0]
    assert main(["eval", "--checkpoint", str(warm), "--against", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_eval_env_kwargs_replace_the_env_kwargs_in_every_evaluation(tmp_path, capsys):
    # Trained to pick "3", evaluated on an env that rewards only "7": every evaluation must score 0.
    warm, run = tmp_path / "warm", tmp_path / "run"
    other_target = ["--eval-env-kwargs", '{"target": "7"}', "--final-eval-episodes", "20"]
    assert main(["pretrain", "--env", "tests.toy_env:PickThree-v0", "--demos", "256", "--expert-prob", "1",
                 "--minibatch-size", "32", "--out", str(warm), *other_target, *SMALL]) == 0
    summary = json.loads((warm / "summary.json").read_text())
    assert summary["demo/success_rate"] == 1 and summary["eval/success_rate"] == 0
    assert main(["train", "--env", "tests.toy_env:PickThree-v0", "--model", str(warm / "checkpoints" / "final"),
                 "--warm-start-demos", "0", "--total-episodes", "32", "--episodes-per-update", "32", "--eval-every",
                 "1", "--eval-episodes", "20", "--lr", "1e-6", "--out", str(run), "--wandb", "disabled",
                 *other_target, *SMALL]) == 0
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert rows[0]["train/success_rate"] > 0.8 and rows[0]["eval/success_rate"] == 0
    assert json.loads((run / "summary.json").read_text())["eval/success_rate"] == 0
    capsys.readouterr()
    for env_kwargs, expected in ([], 0.0), (["--env-kwargs", "{}"], 1.0):  # eval reads the run's eval kwargs
        assert main(["eval", "--checkpoint", str(run), "--episodes", "20", *env_kwargs]) == 0
        assert json.loads(capsys.readouterr().out)["eval/success_rate"] == expected


def test_nan_loss_stops_and_keeps_the_last_good_policy(tmp_path, monkeypatch, capsys):
    import rl_vf.learner as learner

    real_loss, real_set_lr = learner.policy_loss, learner.Learner.set_lr
    poison = {"on": False}

    def set_lr(self, update, total_updates):  # called at the start of every update
        poison["on"] = update >= 1
        real_set_lr(self, update, total_updates)

    def poisoned(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        return (loss * float("nan") if poison["on"] else loss), stats

    monkeypatch.setattr(learner, "policy_loss", poisoned)
    monkeypatch.setattr(learner.Learner, "set_lr", set_lr)
    assert main(ttt_args(tmp_path / "run", 128) + ["--critic-warmup-updates", "0"]) == 1  # no update without a pg loss
    err = capsys.readouterr().err
    assert "non-finite loss at update 2" in err and "Traceback" not in err
    good = tmp_path / "run" / "checkpoints" / "last_good"
    policy, _ = load_policy(str(good))
    assert all(torch.isfinite(p).all() for p in policy.parameters())


def bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--env", "NoSuchEnv-v9"], "'NoSuchEnv-v9'"),
    (["train", "--env", "no_such_module:Thing-v0"], "'no_such_module:Thing-v0'"),
    (["train", "--algo", "a2c"], "unknown algo 'a2c'; choose one of: ppo, reinforce"),
    (["train", "--baseline", "median"], "unknown baseline 'median'"),
    (["train", "--lr", "fast"], "lr must be float, got 'fast'"),
    (["train", "--attention-window", "-1"], "attention_window must be >= 0 (0: no window), got -1"),
    (["train", "--config", "{tmp}/missing.yaml"], "cannot read config file"),
    (["train", "--config", "BADKEY"], "unknown config key 'learning_rate'"),
    (["train", "--config", "BADYAML"], "is not valid YAML"),
    (["train", "--model", "{tmp}/no-model"], "no-model"),
    (["train", "--resume", "{tmp}/nowhere"], "cannot resume"),
    (["eval", "--checkpoint", "{tmp}/nowhere"], "no checkpoint at"),
    (["train", "--env-kwargs", '{"opponent": "grandmaster"}'], "'grandmaster'"),
])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, capsys, argv, needle):
    files = {"BADKEY": bad(tmp_path, "k.yaml", "learning_rate: 0.1\n"), "BADYAML": bad(tmp_path, "y.yaml", "lr: [1,\n")}
    argv = [files.get(a, a.replace("{tmp}", str(tmp_path))) for a in argv]
    assert main(argv + ["--wandb", "disabled", "--out", str(tmp_path / "out")] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # nothing written for a run that never started


def test_a_budget_that_is_not_whole_batches_ends_with_a_smaller_batch(tmp_path, capsys):
    assert main(ttt_args(tmp_path / "run", 40)) == 0
    assert "note:" not in capsys.readouterr().err  # honoured: nothing to announce
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["train/episodes"], summary["updates"]) == (40, 2)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/episodes"] for r in rows if "train/episodes" in r] == [32, 40]


def test_a_budget_of_partial_groups_is_rounded_up_to_whole_groups_with_a_notice(tmp_path, capsys):
    args = ttt_args(tmp_path / "run", 38, algo="reinforce") + ["--baseline", "rloo", "--group-size", "4"]
    assert main(args) == 0
    assert ("note: total_episodes 38 is not a multiple of group_size 4; training plays 40 episodes"
            in capsys.readouterr().err)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["train/episodes"] == 40


@pytest.mark.parametrize("total, per_update, group, sizes", [
    (64, 1024, 1, [64]), (2048, 1024, 1, [1024, 1024]), (40, 32, 1, [32, 8]), (38, 32, 4, [32, 8]), (32, 32, 8, [32]),
])
def test_update_sizes(total, per_update, group, sizes):
    assert update_sizes(total, per_update, group) == sizes


def test_an_unknown_flag_names_the_closest_ones_of_its_command(capsys):
    assert main(["train", "--lrr", "3", "--episodez", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rl-vf train: error: unrecognized argument '--lrr' (did you mean --lr")
    assert "'--episodez' (did you mean" in err and "--total-episodes" in err and err.strip().endswith("--help")
    assert "'3'" not in err and "Traceback" not in err


def test_ctrl_c_saves_a_checkpoint_prints_the_resume_command_and_resume_finishes(tmp_path):
    """A real SIGINT to a training process: it stops after the update it is in, saves, exits 130."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rl_vf", *ttt_args(run, 32 * 40)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled before its first update"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert f"resume with: rl-vf train --resume {run}" in err and "Traceback" not in err
    done = len(read_metrics(run / "metrics.jsonl"))
    assert 1 <= done < 40 and (run / "checkpoints" / f"update_{done:06d}").is_dir()
    assert not (run / "summary.json").exists()

    assert main(["train", "--resume", str(run), "--total-episodes", str(32 * (done + 1))]) == 0
    assert json.loads((run / "summary.json").read_text())["updates"] == done + 1


def test_a_hub_id_without_network_and_a_missing_folder_are_named(capsys, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # no network, whatever this machine has
    assert main(["train", "--model", "someorg/some-model", "--total-episodes", "16"]) == 2
    err = capsys.readouterr().err
    assert "'someorg/some-model' is not a local folder" in err and "cannot be reached" in err and "--model DIR" in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline by choice: said so, the network left alone
    assert main(["train", "--model", "someorg/some-model", "--total-episodes", "16"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert main(["train", "--model", str(tmp_path / "no" / "such"), "--total-episodes", "16"]) == 2
    assert "no such folder" in capsys.readouterr().err
