"""Data-parallel training (rl_vf.distributed) with 2 CPU processes (gloo): an update on N processes is
the 1-process update on the same episodes, ranks stay identical, resume is exact, and a killed
process stops the run with a message."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from rl_vf.cli import main
from rl_vf.config import ConfigError, make_config
from rl_vf.distributed import World, peer_failed, units
from rl_vf.engine import RolloutBatch
from rl_vf.policy import load_policy
from rl_vf.trainer import Trainer

SMALL = {"hidden_size": 32, "layers": 1, "heads": 2, "intermediate_size": 64, "threads": 1}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched(rank: int, size: int, port: int, fsdp: bool = False) -> None:
    """The environment a launcher (accelerate launch, torchrun; ``--use_fsdp``) gives process ``rank``."""
    os.environ.update(OMP_NUM_THREADS="1", WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ACCELERATE_USE_FSDP=str(fsdp).lower())


def join_world(rank: int, size: int, port: int, fsdp: bool = False) -> World:
    launched(rank, size, port, fsdp)
    return World.from_launch(torch.device("cpu"))


def spawn(fn, *args, size: int = 2) -> list[int]:
    """Run ``fn(rank, size, port, *args)`` in ``size`` fresh processes; their exit codes. Each runs to its
    own end (torch's spawn would terminate the others once one fails)."""
    context, port = mp.get_context("spawn"), free_port()
    procs = [context.Process(target=fn, args=(rank, size, port, *args)) for rank in range(size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    return [p.exitcode for p in procs]


TICTACTOE = {"env": "TicTacToe-v0"}
# Exact values (advantage/decision_r2); legal actions only, so that the untrained policy's returns vary.
DECISIONS = {"env": "Decisions-v0", "constrain_actions": "legal"}


def update_config(algo: str, episodes: int, task: dict = TICTACTOE) -> dict:
    # One minibatch of the whole batch (so the shuffle does not matter), one epoch; ppo's critic warm-up
    # on (its decision reads the value statistics, pooled over the processes).
    return {**task, "algo": algo, "episodes_per_update": episodes, "total_episodes": episodes,
            "num_envs": episodes, "minibatch_size": episodes, "epochs": 1, "seed": 3, **SMALL}


def one_update(world: World, algo: str, folder: str, rank_rows: slice, task: dict) -> dict:
    """The update of a fresh trainer on rows ``rank_rows`` of the saved episodes: its stats and the
    gradients and parameters it leaves."""
    episodes = torch.load(os.path.join(folder, "episodes.pt"), weights_only=False)
    t = Trainer(make_config(update_config(algo, len(episodes), task)), os.path.join(folder, f"r{world.rank}"), world)
    batch = RolloutBatch.from_episodes(episodes[rank_rows], t.tokenizer.pad_token_id)
    result = t.update(batch)
    # The gradients the optimizer stepped with (under FSDP its parameters are the shards: gathered whole).
    stepped = [p for group in t.learner.optimizer.param_groups for p in group["params"]]
    grads = [p.grad.full_tensor() if world.fsdp else p.grad for p in stepped if p.grad is not None]
    moments = [t.learner.optimizer.state[p]["exp_avg"] for p in stepped if p in t.learner.optimizer.state]
    if world.fsdp:  # a unit per transformer layer (the policy LM's, the critic's) and the root
        layers = sum(1 for m in t.policy.modules() if isinstance(m, LlamaDecoderLayer))
        assert len(units(t.learner.scorer)) == layers + 1 and layers >= 1
    return {"stats": result.stats, "grads": [g.clone() for g in grads],
            "moments_held": sum((m.to_local() if world.fsdp else m).numel() for m in moments),
            "moments": sum(m.numel() for m in moments),
            "params": {n: p.detach().clone() for n, p in t.policy.named_parameters()}}


def update_worker(rank, size, port, algo, folder, fsdp, task):
    world = join_world(rank, size, port, fsdp)
    assert world.fsdp == fsdp
    share = 16 // size
    out = one_update(world, algo, folder, slice(rank * share, (rank + 1) * share), task)
    torch.save(out, os.path.join(folder, f"rank{rank}.pt"))


@pytest.mark.parametrize("algo,fsdp,task", [("ppo", False, TICTACTOE), ("reinforce", False, DECISIONS),
                                            ("ppo", True, TICTACTOE), ("reinforce", True, TICTACTOE)])
def test_two_process_update_equals_one_process_update_on_the_same_episodes(tmp_path, algo, fsdp, task):
    t = Trainer(make_config(update_config(algo, 16, task)), str(tmp_path / "collect"))
    episodes, _ = t.collect_batch()
    torch.save(episodes, tmp_path / "episodes.pt")
    single = one_update(World(), algo, str(tmp_path), slice(0, 16), task)
    assert spawn(update_worker, algo, str(tmp_path), fsdp, task) == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    held = [r["moments_held"] for r in ranks]
    if fsdp:  # each process keeps its share of Adam's state (each tensor's rows split in two)
        assert sum(held) == single["moments"] and max(held) < 0.6 * single["moments"]
    else:
        assert held == [single["moments"]] * 2
    for r in ranks:
        assert len(r["grads"]) == len(single["grads"])
        for i, grad in enumerate(single["grads"]):
            torch.testing.assert_close(r["grads"][i], grad, rtol=1e-5, atol=1e-5, msg=f"parameter {i}")
    for name, value in single["params"].items():
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name  # ranks identical
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=1e-5, atol=1e-5, msg=name)
    # The value statistics are those of all 16 episodes (the critic warm-up decides on them).
    value_keys = ("value/bias", "value/bias_se", "value/explained_variance_mc", "value/explained_variance",
                  "critic/warmup")
    keys = ("loss/pg", "loss/vf", *value_keys) if algo == "ppo" else ("loss/pg",)
    if task == DECISIONS:  # over all 16 episodes' decisions, not averaged over each process's 8
        keys = (*keys, "advantage/decision_r2")
    for key in keys:
        assert ranks[0]["stats"][key] == pytest.approx(single["stats"][key], rel=1e-5, abs=1e-6), key


def train_args(out, episodes: int) -> list[str]:
    return ["train", "--env", "TicTacToe-v0", "--algo", "ppo", "--critic", "separate", "--total-episodes", str(episodes),
            "--episodes-per-update", "16", "--num-envs", "8", "--minibatch-size", "8", "--epochs", "2",
            "--eval-every", "2", "--eval-episodes", "8", "--final-eval-episodes", "8", "--seed", "5",
            "--lr-schedule", "constant", "--kl-coef", "0.05", "--wandb", "disabled", "--out", str(out),
            *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]]


def train_worker(rank, size, port, argv, kill_at, fsdp=False):
    """``rl-vf train`` in process ``rank``; after every update it records a checksum of its parameters
    (``kill_at``: process 1 dies there, as a killed process would) and the share of Adam's moments it
    holds (all of them, or under FSDP its rows)."""
    launched(rank, size, port, fsdp)
    real = Trainer.train_one
    sums, held = [], []

    def recorded(self, *args):
        if rank == 1 and self.update_idx == kill_at:
            os._exit(9)
        real(self, *args)
        sums.append([float(p.detach().double().sum()) for p in self.policy.parameters()])
        moments = [s["exp_avg"] for s in self.learner.optimizer.state.values()]
        held.append(sum((m.to_local() if isinstance(m, DTensor) else m).numel() for m in moments) /
                    sum(m.numel() for m in moments))

    Trainer.train_one = recorded
    code = main(argv)
    out = argv[argv.index("--out") + 1] if "--out" in argv else argv[argv.index("--resume") + 1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"code": code, "sums": sums, "held": held}, f)


def rows(run) -> list[dict]:
    skip = ("perf/", "update_tokens", "rollout_tokens", "grad_norm/")  # timings vary
    with open(run / "metrics.jsonl") as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith(skip) and "tokens_per_s" not in k}
                for line in f]


@pytest.mark.parametrize("fsdp", [False, True])
def test_two_process_run_keeps_ranks_identical_and_resumes_exactly(tmp_path, fsdp):
    straight, split = tmp_path / "straight", tmp_path / "split"
    for argv in (train_args(straight, 64), train_args(split, 32), ["train", "--resume", str(split), "--total-episodes", "64"]):
        assert spawn(train_worker, argv, None, fsdp) == [0, 0]
    done = [json.loads((straight / f"rank{r}.json").read_text()) for r in range(2)]
    assert [d["code"] for d in done] == [0, 0] and len(done[0]["sums"]) == 4
    assert done[0]["sums"] == done[1]["sums"]  # every rank holds the same parameters after every update
    resumed = json.loads((split / "rank0.json").read_text())["held"]  # the resumed updates'
    # Under FSDP each process holds about half of Adam's moments, also after resuming.
    assert all((0.4 < h < 0.6) if fsdp else h == 1 for h in done[0]["held"] + resumed) and len(resumed) == 2
    assert rows(straight) == rows(split) and rows(straight)[-1]["train/episodes"] == 64
    state = [torch.load(run / "checkpoints" / "update_000004" / "trainer_state.pt", weights_only=False)
             for run in (straight, split)]
    assert len(state[0]["generators"]) == 2 and all(torch.equal(x, y) for x, y in
                                                    zip(state[0]["generators"], state[1]["generators"]))


def test_a_killed_process_stops_the_run_with_a_message_and_resume_finishes_it(tmp_path, capfd):
    run = tmp_path / "run"
    argv = train_args(run, 64) + ["--checkpoint-every", "1"]
    assert spawn(train_worker, argv, 2) == [0, 9]  # process 1 died at update 3; process 0 returned
    err = capfd.readouterr().err
    assert "another process of this data-parallel run failed or was killed" in err and "--resume" in err
    assert json.loads((run / "rank0.json").read_text())["code"] == 1
    assert spawn(train_worker, ["train", "--resume", str(run)], None) == [0, 0]
    assert json.loads((run / "rank0.json").read_text())["code"] == 0
    assert rows(run)[-1]["train/episodes"] == 64
    capfd.readouterr()
    assert main(["train", "--resume", str(run), "--total-episodes", "80"]) == 2  # one process: refused
    assert "comes from a run of 2 process(es); resume it with as many" in capfd.readouterr().err


def faulty_worker(rank, size, port, argv):
    """``rl-vf train`` where process 0 fails on its own (a bug, not a lost peer) in its second update."""
    real = Trainer.update

    def update(self, *args):
        if rank == 0 and self.update_idx == 1:
            raise RuntimeError("a fault of process 0's own")
        return real(self, *args)

    Trainer.update = update
    train_worker(rank, size, port, argv, None)


def test_a_process_that_fails_on_its_own_shows_its_traceback_and_the_other_names_the_lost_peer(tmp_path, capfd):
    run = tmp_path / "run"
    assert spawn(faulty_worker, train_args(run, 32)) == [1, 0]  # process 0 raised; process 1 returned
    err = capfd.readouterr().err
    assert "rl-vf: process 0 of 2 failed; the others stop with it" in err and "--resume" in err
    assert "Traceback" in err and "RuntimeError: a fault of process 0's own" in err
    assert "process 1 of 2 stopped: another process of this data-parallel run failed or was killed" in err
    assert "process 0 of 2 stopped" not in err  # its own error is not blamed on the other process
    assert json.loads((run / "rank1.json").read_text())["code"] == 1


def test_peer_failed_tells_a_lost_peer_from_a_process_own_error():
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                        "[127.0.0.1]:29103. This is typically caused by a remote worker crashing.")
    assert peer_failed(gloo) and peer_failed(torch.distributed.DistBackendError("NCCL communicator was aborted"))
    assert not peer_failed(RuntimeError("mat1 and mat2 shapes cannot be multiplied (3x4 and 5x6)"))


def poisoned_worker(rank, size, port, argv):
    """``rl-vf train`` where process 1's policy loss turns NaN from its second update on."""
    import rl_vf.learner as learner

    real = learner.policy_loss

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan") if rank == 1 and poisoned.update >= 1 else loss), stats

    real_set_lr = learner.Learner.set_lr

    def set_lr(self, update, total_updates):  # called at the start of every update
        poisoned.update = update
        real_set_lr(self, update, total_updates)

    learner.policy_loss, learner.Learner.set_lr = poisoned, set_lr
    train_worker(rank, size, port, argv, None)


def test_a_nan_loss_in_one_process_stops_every_process_at_once(tmp_path, capfd):
    run = tmp_path / "run"
    assert spawn(poisoned_worker, train_args(run, 64) + ["--critic-warmup-updates", "0"]) == [0, 0]
    assert [json.loads((run / f"rank{r}.json").read_text())["code"] for r in range(2)] == [1, 1]  # no hang
    err = capfd.readouterr().err
    assert "non-finite loss at update 2 (in another process)" in err and "Traceback" not in err
    policy, _ = load_policy(str(run / "checkpoints" / "last_good"))
    assert all(torch.isfinite(p).all() for p in policy.parameters())


def test_a_batch_plan_the_processes_cannot_share_is_refused(tmp_path, capfd):
    run = tmp_path / "run"
    argv = train_args(run, 24) + ["--episodes-per-update", "12", "--group-size", "4", "--algo", "reinforce",
                                  "--critic", "shared", "--baseline", "rloo"]
    assert spawn(train_worker, argv, None) == [0, 0]
    assert json.loads((run / "rank0.json").read_text())["code"] == 2
    assert "with 2 processes (x group_size 4), episodes_per_update 12 is not a multiple of 8" in capfd.readouterr().err


@pytest.mark.parametrize("variables,says", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "this launch asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED=true)"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}, "offload parameters to the CPU (FSDP_OFFLOAD_PARAMS=true)"),
])
def test_a_launch_that_asks_for_what_rl_vf_cannot_do_is_refused_not_run_as_ddp(tmp_path, capsys, monkeypatch,
                                                                                variables, says):
    # What `accelerate launch --use_deepspeed` / an FSDP config with offload sets; on CPUs accelerate
    # would run plain DDP.
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(train_args(tmp_path / "run", 8)) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_fsdp_needs_several_processes_and_full_fine_tuning(tmp_path, capsys):
    assert main(train_args(tmp_path / "run", 8) + ["--fsdp"]) == 2
    assert "--fsdp shards a run over several processes: add --processes N" in capsys.readouterr().err
    base = Trainer(make_config({"env": "TicTacToe-v0", **SMALL}), str(tmp_path / "base"))
    base.policy.save_pretrained(str(tmp_path / "model"), base.tokenizer)  # LoRA adapts a saved model
    world = World()
    world.fsdp = True  # what 2 launched processes with --fsdp make; refused before anything is sharded
    with pytest.raises(ConfigError, match="--fsdp with --lora-rank"):
        Trainer(make_config({"env": "TicTacToe-v0", "model": str(tmp_path / "model"), "lora_rank": 4, **SMALL}),
                str(tmp_path / "lora"), world)


def test_processes_that_differ_from_the_launch_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main(train_args(tmp_path / "run", 8) + ["--processes", "2"]) == 2
    assert "--processes 2, but the launcher started 4 processes" in capsys.readouterr().err


def test_fsdp_through_accelerate_launch_trains_and_saves_whole_tensors(tmp_path):
    """`rl-vf train --processes 2 --fsdp` through the real launcher (`accelerate launch --use_fsdp`,
    whose own FSDP would refuse CPUs): it trains, and its checkpoint holds whole tensors that one
    process loads (the update itself: the 2-process tests above)."""
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "rl_vf", *train_args(run, 32), "--processes", "2", "--fsdp"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1/2 of each, FSDP)" in done.stderr  # the memory estimate
    assert rows(run)[-1]["train/episodes"] == 32
    saved = load_policy(str(run / "checkpoints" / "final"))[0].state_dict()
    fresh = Trainer(make_config({"env": "TicTacToe-v0", "critic": "separate", "seed": 5, **SMALL}),
                    str(tmp_path / "fresh"))  # the run's initial weights
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in fresh.policy.state_dict().items()}
    assert any(not torch.equal(saved[k], v) for k, v in fresh.policy.state_dict().items())  # it trained


def test_compare_runs_each_run_as_two_processes_through_accelerate_launch(tmp_path):
    """The real launcher (`accelerate launch --multi_gpu`: torchrun underneath, gloo on the CPU), as
    `rl-vf compare --processes 2` starts it for each run: through `rl-vf train --processes 2`."""
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "rl_vf", "compare", "--env", "TicTacToe-v0", "--seeds", "1", "--algos", "reinforce",
           "--episodes", "32", "--jobs", "1", "--processes", "2", "--out", str(out), "--wandb", "disabled",
           *[a for kv in ["episodes_per_update=16", "num_envs=8", "final_eval_episodes=8", "eval_every=0",
                          *[f"{k}={v}" for k, v in SMALL.items() if k != "threads"]] for a in ("--set", kv)]]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    run = out / "runs" / "reinforce" / "s0"
    state = torch.load(run / "checkpoints" / "update_000002" / "trainer_state.pt", weights_only=False)
    assert len(state["generators"]) == 2 and rows(run)[-1]["train/episodes"] == 32
