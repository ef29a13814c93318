"""Command line: ``python -m rl_vf train|eval|diagnose|pretrain|compare|suite|sweep`` (also installed as ``rl-vf``)."""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from typing import NamedTuple

from rl_vf import compare, sweep
from rl_vf.config import (DEFAULT_RUN_TIME, ENV_DEFAULTS, FIELDS, WARM_START_FIELDS, ConfigError, TrainConfig, coerce,
                          flag, load_yaml, make_config)

DEFAULTS = TrainConfig()
# Flags the issue names first in --help; every other config field follows.
MAIN_FLAGS = ("env", "algo", "seed", "total_episodes", "out", "model", "wandb")


def train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a policy (ppo with a learned critic, vine with Monte-Carlo values, or outcome-only reinforce)",
        description="Train a language-model policy on a Gymnasium text env. Precedence: defaults < the env's "
                    "own defaults (below) < --config YAML < flags. Writes a run folder with config.yaml, "
                    "metrics.jsonl, summary.json, checkpoints/ and eval_samples.jsonl.",
        epilog=env_defaults_help(),
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (the flags below, with underscores)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest checkpoint (exactly, on CPU); "
                                                   "flags given here override its config.yaml, e.g. --total-episodes")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine, started through `accelerate launch` (default 1; "
                        "under a launcher of your own: its process count)")
    p.add_argument("--fsdp", action="store_true",
                   help="shard the gradients and Adam's state over the processes (torch FSDP2; the weights are "
                        "gathered whole for rollouts and each step) instead of replicating them (DDP); with "
                        "--processes N > 1, or under `accelerate launch --use_fsdp`")
    config_flags(p.add_argument_group("run"), MAIN_FLAGS)
    config_flags(p.add_argument_group("every other config key"), [k for k in FIELDS if k not in MAIN_FLAGS])


def env_defaults_help() -> str:
    """Every registered env's own defaults and how long a whole run at them takes (``train --help``)."""
    import envs

    def overrides(env: str) -> str:
        return ", ".join(f"{k}={v}" for k, v in ENV_DEFAULTS.get(env, {}).items()) or "none"

    return ("env defaults, each after the wall time of a whole default run (--threads 1 on a 2-core CPU; "
            "docs/benchmark.md, \"Whole default runs\"): " +
            "; ".join(f"{env} ({DEFAULT_RUN_TIME[env]}): {overrides(env)}" for env in envs.ENV_IDS))


def config_flags(group, names, defaults: dict | None = None) -> None:
    """One flag per config key; ``defaults`` overrides the shown default of some keys."""
    for name in names:
        f = FIELDS[name]
        default = (defaults or {}).get(name, getattr(DEFAULTS, name))
        # default=SUPPRESS: only flags the user typed override the YAML and resumed configs.
        group.add_argument(flag(name), dest=name, default=argparse.SUPPRESS, metavar=f.type.upper(),
                           help=f"{f.metadata['help']} (default: {default!r})")


# Config keys that pretraining reads; --demos and --expert-prob set the warm_start_* keys.
PRETRAIN_KEYS = ("out", "final_eval_episodes", *(k for k in WARM_START_FIELDS if k not in ("warm_start_demos",
                                                                                         "warm_start_expert_prob")))
PRETRAIN_DEFAULTS = {"warm_start_demos": 2000}  # where the env's own defaults set none (train's default is 0)


def pretrain_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="warm-start a policy by supervised learning on the env's demonstrations",
        description="Play --demos episodes with the env's demonstrator (its solver, heuristic or engine, mixed "
                    "with random legal moves), fit the policy to them (the NLL of the demonstrated actions; the "
                    "value function is left as initialised), evaluate it, and save a checkpoint that "
                    "`train --model DIR/checkpoints/final` starts from (`train --warm-start-demos N` does both in one "
                    "run). Writes config.yaml, metrics.jsonl (per epoch), summary.json, checkpoints/final.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (the flags below, with underscores)")
    p.add_argument("--demos", dest="warm_start_demos", default=argparse.SUPPRESS, metavar="INT",
                   help="demonstration episodes (warm_start_demos; default: the env's own, as `train` uses it, "
                        "else 2000)")
    p.add_argument("--expert-prob", dest="warm_start_expert_prob", default=argparse.SUPPRESS, metavar="FLOAT",
                   help="chance that a demonstrated move is the expert's, else a random legal move "
                        f"(warm_start_expert_prob; default: {DEFAULTS.warm_start_expert_prob})")
    config_flags(p.add_argument_group("config keys"), PRETRAIN_KEYS, PRETRAIN_DEFAULTS)


def checkpoint_args(p) -> None:
    """The flags of the commands that load a saved policy (eval, diagnose): which checkpoint, and what
    of its run's settings to override."""
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint folder (checkpoints/final, checkpoints/update_N) or a run folder (uses final)")
    p.add_argument("--env", help="env id (default: the env of the run the checkpoint came from)")
    p.add_argument("--env-kwargs", default=None, metavar="JSON", help="env keyword arguments (default: the run's)")
    p.add_argument("--max-action-tokens", type=int, default=None, help="default: the run's")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")


def eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Evaluate a saved policy on fresh episodes "
                       "and print eval/* metrics as JSON.")
    checkpoint_args(p)
    p.add_argument("--episodes", type=int, default=1000, help="episodes to play (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the eval episodes and sampling (default: 0)")
    p.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=None,
                   help="play the argmax action (--no-greedy: sample); default: the run's eval_greedy")
    p.add_argument("--against", metavar="DIR",
                   help="a second checkpoint (e.g. the warm start) played on the same episodes: adds its rates and "
                        "the paired difference in success rate with a 95%% bootstrap interval over the episodes")


def diagnose_parser(sub) -> None:
    p = sub.add_parser(
        "diagnose", help="value-function diagnostics of a checkpoint",
        description="Play held-out episodes with a saved policy and check its value head: calibration, "
                    "Monte-Carlo ground truth from K continuations of sampled mid-episode states, the critic's "
                    "ranking of M actions, early failure detection, and per-token advantage maps (README "
                    "\"Value diagnostics\"). Prints the value/* metrics as JSON; writes advantages.html, "
                    "advantages.png and diagnostics.json (every per-position array) to --out.",
    )
    checkpoint_args(p)
    p.add_argument("--episodes", type=int, default=None, metavar="N",
                   help=f"held-out episodes (default: the run's diag_episodes, else {DEFAULTS.diag_episodes})")
    p.add_argument("--states", type=int, default=None, metavar="N",
                   help="mid-episode states valued by Monte Carlo "
                        f"(default: the run's diag_states, else {DEFAULTS.diag_states})")
    p.add_argument("--rollouts", type=int, default=None, metavar="K",
                   help="continuations per state and per action "
                        f"(default: the run's diag_rollouts, else {DEFAULTS.diag_rollouts})")
    p.add_argument("--actions", type=int, default=None, metavar="M",
                   help="distinct actions ranked per state "
                        f"(default: the run's diag_actions, else {DEFAULTS.diag_actions})")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out episodes and sampling (default: 0)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN/diagnose/<checkpoint name> for a "
                   "checkpoint of a run, else CHECKPOINT-diagnose beside it; never inside the checkpoint)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rl-vf", description="Credit assignment for LM policies on Gymnasium text envs: "
                                     "PPO with a learned critic, Monte-Carlo values from continuations (vine) and "
                                     "final-outcome REINFORCE.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,diagnose,pretrain,compare,suite,sweep}")
    train_parser(sub)
    eval_parser(sub)
    diagnose_parser(sub)
    pretrain_parser(sub)
    compare.add_parsers(sub)
    sweep.add_parser(sub)
    parser.set_defaults(commands=sub.choices)
    return parser


def unrecognized(args: argparse.Namespace, extra: list[str]) -> str:
    """The error for arguments the command does not take, with the closest of its flags."""
    flags = [o for a in args.commands[args.command]._actions for o in a.option_strings if o.startswith("--")]
    lines = []
    for arg in [a for a in extra if a.startswith("-")] or extra:  # a flag's value is not worth a line
        near = difflib.get_close_matches(arg.split("=")[0], flags, n=3) if arg.startswith("-") else []
        lines.append(f"unrecognized argument {arg!r}" + (f" (did you mean {', '.join(near)}?)" if near else ""))
    return f"{'; '.join(lines)}; see rl-vf {args.command} --help"


def default_run_dir(cfg, kind: str | None = None) -> str:
    env = cfg.env.split(":")[-1].replace("/", "_")
    return os.path.join("runs", f"{env}-{kind or cfg.algo}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")


def latest_checkpoint(run_dir: str) -> str:
    ckpt_root = os.path.join(run_dir, "checkpoints")
    found = sorted(d for d in os.listdir(ckpt_root) if d.startswith("update_")) if os.path.isdir(ckpt_root) else []
    if not found:
        raise ConfigError(f"no checkpoint to resume from in {ckpt_root!r}")
    return os.path.join(ckpt_root, found[-1])


# What a run's checkpoints are tied to: a resume may extend or re-log a run, not change these.
# (Not `model`: the weights come from the checkpoint, and `make train` always passes --model.)
RESUME_FIXED = ("env", "env_kwargs", "algo", "seed", "critic", "critic_lr", "hidden_size", "layers", "heads",
                "intermediate_size", "attention_window", "constrain_actions", "max_action_tokens", "group_size", "lora_rank")


def cmd_train(args: argparse.Namespace) -> int:
    from rl_vf.actor import resolve_device
    from rl_vf.config import write_config
    from rl_vf.distributed import World, peer_failed
    from rl_vf.metrics_log import MetricsLog
    from rl_vf.trainer import Interrupted, Trainer, TrainingDiverged

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if args.processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {args.processes}")
    if args.fsdp and max(args.processes, launched) == 1:
        raise ConfigError("--fsdp shards a run over several processes: add --processes N (N > 1)")
    if args.processes > 1 and launched == 1:
        return launch_processes(args.processes, args.argv, args.fsdp)
    if args.processes > 1 and args.processes != launched:
        raise ConfigError(f"--processes {args.processes}, but the launcher started {launched} processes")
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    file_layer = load_yaml(args.config) if args.config else {}
    if args.resume:
        run_config = os.path.join(args.resume, "config.yaml")
        if not os.path.isfile(run_config):
            raise ConfigError(f"cannot resume {args.resume!r}: no config.yaml there")
        run_layer = load_yaml(run_config)
        saved = make_config(run_layer, {"out": args.resume})
        cfg = make_config(run_layer, file_layer, flags, {"out": args.resume})
        changed = [f"{k}={getattr(saved, k)!r} (asked: {getattr(cfg, k)!r})" for k in RESUME_FIXED
                   if getattr(cfg, k) != getattr(saved, k)]
        if changed:
            raise ConfigError(f"cannot resume {args.resume!r} with a different {', '.join(changed)}: its checkpoints "
                              f"belong to that setup; start a new run instead")
        checkpoint = latest_checkpoint(args.resume)
    else:
        cfg = make_config(file_layer, flags)
        checkpoint = None
    world = World.from_launch(resolve_device(cfg.device), fsdp=args.fsdp)
    run_dir = world.gather([cfg.out or default_run_dir(cfg)])[0]  # the main process's (a default has the time)
    cfg.out = run_dir
    if cfg.warm_start_demos and not checkpoint:
        from rl_vf.pretrain import warm_start

        warm_dir = os.path.join(run_dir, "warm_start")
        if world.is_main:
            # A check on the way, not the run's result: the periodic evaluation's size, not the final one's.
            print_warm_start(warm_start(cfg, warm_dir, cfg.eval_episodes))
        world.wait()
        cfg.model = os.path.join(warm_dir, "checkpoints", "final")  # config.yaml records where RL started from
    trainer = Trainer(cfg, run_dir, world)  # validates env and model before anything is written
    log = None
    if world.is_main:
        os.makedirs(run_dir, exist_ok=True)
        write_config(cfg, run_dir)
    if checkpoint:
        trainer.load_checkpoint(checkpoint)
        if world.is_main:
            print(f"resuming {run_dir} from {checkpoint} (update {trainer.update_idx})", file=sys.stderr)
    if world.is_main:
        log = MetricsLog(run_dir, cfg.to_dict(), cfg.wandb, resume_after=trainer.update_idx if checkpoint else None)
    try:
        summary = trainer.train(log)
    except TrainingDiverged as e:
        print(f"rl-vf: training stopped: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        if world.is_main:
            print(f"rl-vf: {e}\nresume with: rl-vf train --resume {run_dir}", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if world.size == 1:
            raise
        resume = f"resume with the same launch and: rl-vf train --resume {run_dir}"
        if not peer_failed(e):  # this process's own error: its traceback follows
            print(f"rl-vf: process {world.rank} of {world.size} failed; the others stop with it; {resume}",
                  file=sys.stderr)
            raise
        print(f"rl-vf: process {world.rank} of {world.size} stopped: another process of this data-parallel run "
              f"failed or was killed ({type(e).__name__}: {str(e).splitlines()[0]}); {resume}", file=sys.stderr)
        return 1
    finally:
        if log is not None:
            log.close()
        trainer.close()
    if not world.is_main:
        return 0
    keys = [k for k in ("eval/success_rate", "eval/return_mean", "eval/invalid_action_rate") if k in summary]
    print(f"run folder: {run_dir}")
    print("final eval over {} episodes: {}".format(
        summary["eval/episodes"], ", ".join(f"{k}={summary[k]:.3f}" for k in keys)))
    return 0


class Checkpoint(NamedTuple):
    path: str
    run: TrainConfig  # the config of the run it came from (defaults if there is none)
    env: str
    env_kwargs: dict
    env_info: object  # actor.EnvInfo
    policy: object
    tokenizer: object
    device: object
    max_action_tokens: int


def open_checkpoint(args: argparse.Namespace) -> Checkpoint:
    """The policy of ``--checkpoint`` (a checkpoint or run folder) on ``--device``, for ``--env`` and
    ``--env-kwargs``; the run's config.yaml gives the defaults (its evaluation env's kwargs), also of
    ``--max-action-tokens``."""
    from rl_vf.actor import open_env, policy_for_env, resolve_device

    path = args.checkpoint
    if os.path.isdir(os.path.join(path, "checkpoints", "final")):
        path = os.path.join(path, "checkpoints", "final")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"no checkpoint at {args.checkpoint!r} (expected a folder with config.json, or a run folder)")
    run_config = os.path.join(path, "..", "..", "config.yaml")
    run = make_config(load_yaml(run_config)) if os.path.isfile(run_config) else make_config()
    env = args.env or run.env
    env_kwargs = coerce("env_kwargs", args.env_kwargs) if args.env_kwargs is not None else (
        run.eval_kwargs if env == run.env else {})
    device = resolve_device(args.device)
    env_info = open_env(env, env_kwargs)
    policy, tokenizer = policy_for_env(path, run, env_info)
    return Checkpoint(path, run, env, env_kwargs, env_info, policy.to(device), tokenizer, device,
                      args.max_action_tokens or run.max_action_tokens or env_info.action_tokens)


def cmd_eval(args: argparse.Namespace) -> int:
    from rl_vf.actor import success_ci

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    c = open_checkpoint(args)
    greedy = c.run.eval_greedy if args.greedy is None else args.greedy
    metrics, episodes = play(c, args, greedy)
    report = {"checkpoint": c.path, "env": c.env, "greedy": greedy, "eval/episodes": args.episodes, **metrics,
              **success_ci(metrics, args.episodes)}
    if args.against:
        # The same env, kwargs and episode seeds; each policy keeps its own run's decoding settings.
        other = open_checkpoint(argparse.Namespace(**{**vars(args), "checkpoint": args.against, "env": c.env,
                                                      "env_kwargs": c.env_kwargs}))
        other_metrics, other_episodes = play(other, args, greedy)
        report.update({"against": other.path, **{f"against/{k}": v for k, v in other_metrics.items()},
                       **{f"against/{k}": v for k, v in success_ci(other_metrics, args.episodes).items()},
                       **paired_difference(episodes, other_episodes, args.seed)})
    print(json.dumps(report, indent=2))
    return 0


def play(c: Checkpoint, args: argparse.Namespace, greedy: bool):
    from rl_vf.actor import evaluate

    return evaluate(c.policy, c.tokenizer, c.env_info.make, c.run, args.episodes, args.seed, greedy,
                    c.max_action_tokens, c.device)


def paired_difference(episodes, other_episodes, seed: int) -> dict:
    """Success (return, for an env without success) of ``episodes`` minus ``other_episodes``, paired
    by reset seed (the same task for both), with a 95% bootstrap interval over the episodes, and how
    many episodes came out better for each."""
    import numpy as np

    from rl_vf.stats import bootstrap_ci

    name = "success" if any(e.success is not None for e in episodes) else "return"
    outcome = (lambda e: float(bool(e.success))) if name == "success" else (lambda e: e.ret)
    other = {e.seed: outcome(e) for e in other_episodes}
    diff = np.array([outcome(e) - other[e.seed] for e in episodes])
    point, lo, hi = bootstrap_ci(diff, statistic=np.mean, seed=seed)
    return {f"paired/{name}_diff": point, f"paired/{name}_diff_ci95": [lo, hi],
            "paired/only_checkpoint": int((diff > 0).sum()), "paired/only_against": int((diff < 0).sum())}


def cmd_diagnose(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from rl_vf import diagnostics
    from rl_vf.algos import ALGOS

    c = open_checkpoint(args)
    overrides = {"diag_episodes": args.episodes, "diag_states": args.states, "diag_rollouts": args.rollouts,
                 "diag_actions": args.actions}
    cfg = dataclasses.replace(c.run, seed=args.seed, **{k: v for k, v in overrides.items() if v is not None}).validate()
    if not ALGOS[cfg.algo].uses_critic:
        print(f"note: this policy was trained with {cfg.algo}, which does not train the value head", file=sys.stderr)
    report = diagnostics.diagnose(c.policy, c.tokenizer, c.env_info.make, cfg, torch.Generator(device=c.device).manual_seed(args.seed),
                                  c.max_action_tokens, c.device)
    out = args.out or diagnose_dir(c.path)
    diagnostics.write_maps(report, out)
    row = {"checkpoint": c.path, "env": c.env, **diagnostics.report_row(report)}
    with open(os.path.join(out, "diagnostics.json"), "w") as f:
        json.dump(row, f, indent=1)
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, (list, dict))}, indent=2))
    print(f"maps and per-position arrays: {out}", file=sys.stderr)
    return 0


def diagnose_dir(checkpoint: str) -> str:
    """Where ``diagnose`` writes by default: beside the run's checkpoints, not inside one (a checkpoint
    folder stays what ``save_pretrained`` wrote)."""
    path = os.path.normpath(checkpoint)
    parent = os.path.dirname(path)
    if os.path.basename(parent) == "checkpoints":
        return os.path.join(os.path.dirname(parent), "diagnose", os.path.basename(path))
    return path + "-diagnose"


def pretrain_config(file_layer: dict, flags: dict) -> TrainConfig:
    """``pretrain``'s settings: the config file's, then the flags, over the env's defaults, so that at
    the env's defaults it makes the warm start `train` makes; an env without warm-start defaults gets
    ``PRETRAIN_DEFAULTS``' demos."""
    env = {**file_layer, **flags}.get("env", FIELDS["env"].default)
    defaults = {} if "warm_start_demos" in ENV_DEFAULTS.get(env, {}) else PRETRAIN_DEFAULTS
    return make_config(defaults, file_layer, flags)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from rl_vf.pretrain import pretrain

    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    cfg = pretrain_config(load_yaml(args.config) if args.config else {}, flags)
    run_dir = cfg.out or default_run_dir(cfg, "pretrain")
    cfg.out = run_dir
    summary = pretrain(cfg, run_dir, cfg.final_eval_episodes)
    print(f"run folder: {run_dir}")
    print_warm_start(summary)
    print(f"train from it: make train ENV={cfg.env} MODEL={summary['checkpoint']}")
    return 0


def launch_processes(processes: int, argv: list[str], fsdp: bool = False) -> int:
    """``rl-vf train --processes N``: the same command as N data-parallel processes (``accelerate
    launch``); waits for them. Ctrl-C reaches them as well, and they stop at a safe point and save."""
    import signal
    import subprocess

    from rl_vf.distributed import launch_command

    proc = subprocess.Popen([*launch_command(processes, fsdp), *argv])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def print_warm_start(summary: dict) -> None:
    def outcome(prefix: str) -> str:  # the success rate, or the mean return for an env without success
        key = f"{prefix}/success_rate" if f"{prefix}/success_rate" in summary else f"{prefix}/return_mean"
        return f"{key.split('/')[1]}={summary[key]:.3f}"

    print(f"demonstrator: {outcome('demo')} over {summary['demos']} demos; warm start "
          f"({'greedy' if summary['eval/greedy'] else 'sampled'}) over {summary['eval/episodes']} episodes: "
          f"{outcome('eval')}, invalid_action_rate={summary['eval/invalid_action_rate']:.3f} "
          f"({summary['perf/wall_s']:.0f} s{'; reused from ' + summary['cache'] if summary.get('cached') else ''})",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if extra:
        print(f"rl-vf {args.command}: error: {unrecognized(args, extra)}", file=sys.stderr)
        return 2
    try:
        commands = {"train": cmd_train, "eval": cmd_eval, "diagnose": cmd_diagnose, "pretrain": cmd_pretrain}
        return commands[args.command](args) if args.command in commands else args.func(args)
    except ConfigError as e:
        print(f"rl-vf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a training loop's safe points, or a second Ctrl-C
        print("\nrl-vf: interrupted", file=sys.stderr)
        return 130
