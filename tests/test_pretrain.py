"""Warm start from demonstrations: transcript layout, learning, and the checkpoint RL starts from."""
import json
import os

import numpy as np
import pytest
import torch
import yaml

import tests.toy_env  # noqa: F401  (registers PickThree-v0)
from envs.tictactoe import solve
from rl_vf.cli import main
from rl_vf.metrics_log import read_metrics
from rl_vf.policy import load_policy
from rl_vf.engine import stop_token_mask
from rl_vf import pretrain as pretrain_module
from rl_vf.config import FIELDS, WARM_START_FIELDS, TrainConfig, make_config
from rl_vf.pretrain import demo_episode, demo_episodes, stop_token
from rl_vf.tokenizer import char_tokenizer
from rl_vf.actor import open_env, transcript

SMALL = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64", "--threads", "1"]


def test_demo_transcript_has_the_engine_layout():
    env_info = open_env("TicTacToe-v0", {})
    tokenizer = char_tokenizer(env_info.alphabet)
    env = env_info.make()
    ep = demo_episode(env, seed=5, rng=np.random.default_rng(0), expert_prob=1.0, tokenizer=tokenizer,
                      max_action_tokens=1)
    assert ep.tokens[0] == tokenizer.bos_token_id and ep.action_mask[0] == 0
    parts = transcript(tokenizer, ep)
    observations, actions = parts[0::2], parts[1::2]
    assert [a["action"] for a in actions] == ep.actions
    for obs, act in zip(observations, actions):  # every demonstrated move is a minimax-optimal one
        board = obs["observation"].replace("\n", "")
        assert int(act["action"]) in solve(board)[1]
    # One-token actions fill the budget: no stop token. The reward sits on the last action token.
    assert sum(ep.action_mask) == len(ep.actions)
    last_action = max(i for i, m in enumerate(ep.action_mask) if m)
    assert ep.rewards[last_action] == ep.ret and sum(ep.rewards) == ep.ret and ep.ret >= 0


def test_short_actions_end_with_the_stop_token():
    env_info = open_env("tests.toy_env:PickThree-v0", {})
    tokenizer = char_tokenizer(env_info.alphabet)
    ep = demo_episode(env_info.make(), 0, np.random.default_rng(0), 1.0, tokenizer, max_action_tokens=4)
    actions = [t for t, m in zip(ep.tokens, ep.action_mask) if m]
    assert actions == tokenizer.encode("3", add_special_tokens=False) + [stop_token(tokenizer)]
    assert stop_token_mask(tokenizer)[stop_token(tokenizer)] and ep.success
    assert stop_token(tokenizer) == tokenizer.eos_token_id  # "pick:" shows no newline, so none in the vocabulary
    ttt = char_tokenizer(open_env("TicTacToe-v0", {}).alphabet)
    assert ttt.decode([stop_token(ttt)]) == "\n"


def test_demos_are_the_same_on_any_number_of_threads():
    """Demo i depends on (seed, i) alone, so threads change the speed, not the demonstrations; and
    the seed and the expert share do change them."""
    env_info = open_env("TicTacToe-v0", {})
    tokenizer = char_tokenizer(env_info.alphabet)

    def demos(threads, seed=0, expert_prob=0.5):
        cfg = TrainConfig(env="TicTacToe-v0", seed=seed, warm_start_demos=24, env_threads=threads,
                          warm_start_expert_prob=expert_prob)
        return [(ep.tokens, ep.action_mask, ep.rewards) for ep in demo_episodes(env_info.make, cfg, tokenizer, 1, None)]

    one = demos(1)
    assert demos(4) == one and len(one) == 24
    assert demos(4, seed=1) != one and demos(1, expert_prob=1.0) != one


def test_pretrain_teaches_the_expert_and_train_starts_from_it(tmp_path, capsys):
    out = tmp_path / "warm"
    assert main(["pretrain", "--env", "tests.toy_env:PickThree-v0", "--demos", "256", "--expert-prob", "1",
                 "--warm-start-epochs", "8", "--minibatch-size", "32", "--final-eval-episodes", "50", "--out", str(out),
                 *SMALL]) == 0
    assert "train from it: make train" in capsys.readouterr().out
    nll = [r["pretrain/nll"] for r in read_metrics(out / "metrics.jsonl")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demo/success_rate"] == 1.0
    assert nll[-1] < 0.1 < nll[0], nll
    assert summary["eval/success_rate"] == 1.0  # greedy "3" then stop, every time
    # RL continues from the warm start: its very first batch (sampled) is already mostly right.
    run = tmp_path / "rl"
    assert main(["train", "--env", "tests.toy_env:PickThree-v0", "--model", str(out / "checkpoints" / "final"),
                 "--total-episodes", "64", "--episodes-per-update", "64", "--final-eval-episodes", "16",
                 "--eval-every", "0", "--wandb", "disabled", "--out", str(run), "--threads", "1"]) == 0
    assert read_metrics(run / "metrics.jsonl")[0]["train/success_rate"] > 0.8
    policy, _ = load_policy(str(out / "checkpoints" / "final"))
    assert policy.config.hidden_size == 32


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_the_warm_start_lr_follows_its_schedule(tmp_path, monkeypatch, schedule):
    """The lr of each of the warm start's steps (64 demos in minibatches of 32, 2 epochs: 4 steps),
    as the optimizer holds it when it steps."""
    rates = []
    set_lr = pretrain_module.scheduled_lr

    def recording(optimizer, *args):
        set_lr(optimizer, *args)
        rates.append(optimizer.param_groups[0]["lr"])

    monkeypatch.setattr(pretrain_module, "scheduled_lr", recording)
    assert main(["pretrain", "--env", "tests.toy_env:PickThree-v0", "--demos", "64", "--warm-start-epochs", "2",
                 "--minibatch-size", "32", "--warm-start-lr", "0.004", "--warm-start-lr-schedule", schedule,
                 "--final-eval-episodes", "4", "--out", str(tmp_path / "warm"), *SMALL]) == 0
    expected = [0.004, 0.003, 0.002, 0.001] if schedule == "linear" else [0.004] * 4
    assert rates == pytest.approx(expected)


def test_pretrain_at_an_envs_defaults_makes_the_warm_start_train_makes():
    """`rl-vf pretrain --env ConnectFour-v0` uses the env's warm-start settings (4000 demos, as `train`
    does); an env without them gets pretrain's own 2000; flags win over both."""
    from rl_vf.cli import pretrain_config

    connect_four = pretrain_config({}, {"env": "ConnectFour-v0"})
    assert connect_four.warm_start_demos == 4000 == make_config({"env": "ConnectFour-v0"}).warm_start_demos
    assert pretrain_config({}, {"env": "TicTacToe-v0"}).warm_start_demos == 2000
    assert pretrain_config({"env": "ConnectFour-v0"}, {"warm_start_demos": 10}).warm_start_demos == 10


def test_the_warm_start_leaves_the_value_function_as_initialised(tmp_path):
    """A critic is fitted only to the returns of the policy being trained (DESIGN.md): the warm start
    trains the LM alone and saves no separate critic (even for a run with one); its value head is
    still the zero init, and the RL run's separate critic starts from the warm-started trunk."""
    run = tmp_path / "rl"
    assert main(["train", "--env", "tests.toy_env:PickThree-v0", "--warm-start-demos", "64", "--warm-start-epochs", "2",
                 "--warm-start-expert-prob", "1", "--minibatch-size", "32", "--critic", "separate",
                 "--total-episodes", "16", "--episodes-per-update", "16", "--final-eval-episodes", "8",
                 "--eval-every", "0", "--wandb", "disabled", "--out", str(run), *SMALL]) == 0
    warm = run / "warm_start"
    policy, _ = load_policy(str(warm / "checkpoints" / "final"))
    assert policy.critic is None
    assert all(torch.equal(p, torch.zeros_like(p)) for p in policy.value_head.parameters())
    nll = [r["pretrain/nll"] for r in read_metrics(warm / "metrics.jsonl")]
    assert nll[-1] < nll[0] and set(read_metrics(warm / "metrics.jsonl")[0]) == {"epoch", "pretrain/nll"}


def test_train_with_warm_start_demos_pretrains_first(tmp_path):
    run = tmp_path / "rl"
    assert main(["train", "--env", "tests.toy_env:PickThree-v0", "--warm-start-demos", "256",
                 "--warm-start-expert-prob", "1", "--minibatch-size", "32", "--total-episodes", "64",
                 "--episodes-per-update", "64", "--final-eval-episodes", "16", "--eval-every", "0",
                 "--wandb", "disabled", "--out", str(run), *SMALL]) == 0
    warm = json.loads((run / "warm_start" / "summary.json").read_text())
    assert warm["eval/success_rate"] == 1.0 and warm["demos"] == 256
    assert read_metrics(run / "metrics.jsonl")[0]["train/success_rate"] > 0.8
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == warm["checkpoint"]


def test_the_warm_start_cache_key_holds_every_config_key_pretrain_reads(tmp_path, monkeypatch):
    read = set()

    class Recording(TrainConfig):
        def __getattribute__(self, name):
            read.add(name)
            return super().__getattribute__(name)

    cfg = make_config({"env": "tests.toy_env:PickThree-v0", "warm_start_demos": 4, "warm_start_epochs": 1,
                       "hidden_size": 16, "intermediate_size": 32, "layers": 1, "heads": 2, "threads": 1})
    recording = Recording(**{name: getattr(cfg, name) for name in FIELDS})
    monkeypatch.setattr(pretrain_module, "write_config", lambda *_: None)  # it reads every key, to save them
    read.clear()
    pretrain_module.pretrain(recording, str(tmp_path), eval_episodes=4)
    assert {"warm_start_lr", "seed", "model"} <= read & set(FIELDS) <= set(WARM_START_FIELDS) | {"critic"}


def weights(run):
    return (run / "warm_start" / "checkpoints" / "final" / "model.safetensors").read_bytes()


def test_train_reuses_a_cached_warm_start_only_when_every_setting_matches(tmp_path):
    def train(name, *extra):
        run = tmp_path / name
        assert main(["train", "--env", "tests.toy_env:PickThree-v0", "--warm-start-demos", "32",
                     "--warm-start-epochs", "1", "--minibatch-size", "16", "--total-episodes", "16",
                     "--episodes-per-update", "16", "--final-eval-episodes", "4", "--eval-episodes", "4",
                     "--eval-every", "0", "--wandb", "disabled", "--seed", "11", "--out", str(run), *SMALL,
                     *extra]) == 0
        return run, json.loads((run / "warm_start" / "summary.json").read_text())

    first, summary = train("ppo")
    assert summary["cached"] is False and summary["checkpoint"] == str(first / "warm_start" / "checkpoints" / "final")
    other_arm, summary = train("reinforce", "--algo", "reinforce", "--lr", "1e-2")  # RL settings: not the warm start's
    assert summary["cached"] is True and summary["checkpoint"].startswith(str(other_arm))
    assert weights(other_arm) == weights(first)
    fresh, summary = train("no-cache", "--warm-start-cache", "false")
    assert "cached" not in summary and weights(fresh) == weights(first)  # same settings, same weights
    changed, summary = train("other-lr", "--warm-start-lr", "1e-2")
    assert summary["cached"] is False and weights(changed) != weights(first)


def test_two_runs_that_need_the_same_warm_start_compute_it_once(tmp_path, monkeypatch):
    import threading
    import time

    computed = []

    def slow_pretrain(cfg, run_dir, eval_episodes):  # stands in for the minutes a real one takes
        computed.append(run_dir)
        time.sleep(0.5)
        os.makedirs(os.path.join(run_dir, "checkpoints", "final"))
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump({"demos": cfg.warm_start_demos}, f)
        return {}

    monkeypatch.setenv("RL_VF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrain_module, "pretrain", slow_pretrain)
    cfg = make_config({"env": "tests.toy_env:PickThree-v0", "warm_start_demos": 4})
    summaries = {}
    runs = [threading.Thread(target=lambda name=name: summaries.setdefault(
        name, pretrain_module.warm_start(cfg, str(tmp_path / name), 4))) for name in ("a", "b")]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert len(computed) == 1 and sorted(s["cached"] for s in summaries.values()) == [False, True]
    assert all(os.path.isdir(tmp_path / name / "checkpoints" / "final") for name in ("a", "b"))
    key = os.path.basename(summaries["a"]["cache"])
    assert sorted(os.listdir(tmp_path / "cache" / "warm_starts")) == [key, key + ".lock"]  # no partial copies left


def test_an_env_whose_source_is_in_no_file_is_never_cached(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "notebook_cell", types.ModuleType("notebook_cell"))  # no __file__
    env = type("NotebookEnv", (), {"__module__": "notebook_cell"})()
    env.unwrapped = env
    cfg = make_config({"env": "tests.toy_env:PickThree-v0", "warm_start_demos": 4})
    assert pretrain_module.source_files(env) is None and pretrain_module.warm_start_key(cfg, 4, env) is None


@pytest.mark.parametrize("argv,needle", [
    (["--demos", "0"], "(--demos, warm_start_demos) must be >= 1, got 0"),
    (["--expert-prob", "1.5"], "warm_start_expert_prob must be in [0, 1], got 1.5"),
    (["--demos", "many"], "warm_start_demos must be int, got 'many'"),
    (["--env", "Taxi-v4"], "has no demonstrator"),
])
def test_bad_pretrain_input_exits_2(tmp_path, capsys, argv, needle):
    assert main(["pretrain", "--out", str(tmp_path / "x"), *argv]) == 2
    assert needle in capsys.readouterr().err
