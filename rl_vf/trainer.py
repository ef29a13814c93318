"""The training loop: collect -> advantages -> update -> log -> eval -> checkpoint, repeat.

The actor plays (``rl_vf.actor``), the learner trains (``rl_vf.learner``), the algorithm says how
credit is assigned (``rl_vf.algos``); the trainer only runs the loop and keeps the run folder."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from rl_vf import diagnostics
from rl_vf.actor import Actor, episode_metrics, open_env, policy_for_env, resolve_device, success_ci, transcript
from rl_vf.algos import ALGOS
from rl_vf.config import ConfigError, TrainConfig
from rl_vf.distributed import World
from rl_vf.engine import Episode, RolloutBatch
from rl_vf.learner import Learner, NonFiniteLoss, Update
from rl_vf.metrics_log import MetricsLog
from rl_vf.policy import load_policy

STATE_FILE = "trainer_state.pt"


class Interrupted(Exception):
    """Ctrl-C stopped the run at the end of an update, after saving a resumable checkpoint."""

    def __init__(self, update: int, checkpoint: str):
        super().__init__(f"interrupted after update {update}; checkpoint {checkpoint}")
        self.update, self.checkpoint = update, checkpoint


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the run stops and the last good policy stays on disk."""


class Outcome(NamedTuple):
    """What ``episode_metrics`` reads of an episode: small enough to gather from every process."""

    ret: float
    success: bool
    invalid: bool


class Trainer:
    """One run's loop. ``world``: the data-parallel processes (``rl_vf.distributed``); each plays and
    trains on its share of every update, and only the main one logs, evaluates and saves."""

    def __init__(self, cfg: TrainConfig, run_dir: str, world: World | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.world = world = world or World()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = world.device or resolve_device(cfg.device)
        check_world_size(cfg, world.size)
        env, eval_env = open_env(cfg.env, cfg.env_kwargs), open_env(cfg.env, cfg.eval_kwargs)
        self.max_action_tokens = cfg.max_action_tokens or env.action_tokens
        self.algo = ALGOS[cfg.algo]
        policy, self.tokenizer = policy_for_env(cfg.model, cfg, env)
        self.policy = policy.to(self.device)
        # Samples where the logits are; each process its own stream (rank 0's is a 1-process run's).
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 7919 * world.rank)
        self.learner = Learner(self.policy, cfg, self.device, self.generator, world)
        self.actor = Actor(self.policy, self.tokenizer, cfg, env, eval_env, self.max_action_tokens, self.device,
                           self.generator, branching=self.algo.uses_branches, shard=(world.rank, world.size))
        if world.is_main:
            rows = min(cfg.num_envs, cfg.episodes_per_update // world.size)
            shards = world.size if world.fsdp else 1
            m = memory_estimate(self.policy, cfg, rows, shards)
            sharded = f" (1/{shards} of each, FSDP)" if shards > 1 else ""
            print(f"memory estimate (MB per process): weights {m['weights']:.1f}, gradients {m['gradients']:.1f}, Adam "
                  f"{m['adam']:.1f}{sharded}, KL reference {m['reference']:.1f}; rollout KV cache {m['kv_cache_per_1k_tokens']:.1f} "
                  f"per 1,000 tokens of context ({rows} episodes at once); activations come on top (bounded by "
                  f"update_tokens; less with --gradient-checkpointing)", file=sys.stderr)
        self.update_idx = 0
        self.episodes_done = 0
        self.wall_s = 0.0
        # Cumulative cost, for comparisons at equal compute (compare reads them off metrics.jsonl).
        # perf/generated_tokens includes the branches' continuations (perf/branch_tokens of them).
        self.counters = {"train/env_steps": 0, "perf/generated_tokens": 0, "perf/branch_tokens": 0,
                         "perf/trained_tokens": 0}

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint_dir(self, name: str) -> str:
        return os.path.join(self.run_dir, "checkpoints", name)

    def save_checkpoint(self, name: str | None = None) -> str:
        """Every process calls it (each hands in its generator); the main process writes."""
        path = self.checkpoint_dir(name or f"update_{self.update_idx:06d}")
        generators = self.world.gather([self.generator.get_state()])
        learner, policy = self.learner.state_dict(), self.learner.policy_state()
        if not self.world.is_main:
            return path
        os.makedirs(path, exist_ok=True)
        self.policy.save_pretrained(path, self.tokenizer, policy)
        torch.save({
            "update": self.update_idx, "episodes": self.episodes_done, "wall_s": self.wall_s, "counters": self.counters,
            "generators": generators, **learner,
        }, os.path.join(path, STATE_FILE))
        if name is None:
            old = sorted(d for d in os.listdir(os.path.dirname(path)) if d.startswith("update_"))
            for stale in old[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(self.checkpoint_dir(stale))
        return path

    def load_checkpoint(self, path: str) -> None:
        policy, _ = load_policy(path)
        self.learner.load_policy(policy.state_dict())
        state = torch.load(os.path.join(path, STATE_FILE), map_location=self.device, weights_only=False)
        self.learner.load_state_dict(state)
        generators = state.get("generators") or [state["generator"]]  # checkpoints from before data-parallel runs
        if len(generators) != self.world.size:
            raise ConfigError(f"checkpoint {path!r} comes from a run of {len(generators)} process(es); resume it with "
                              f"as many (this is {self.world.size}): each process's sampling stream is in it")
        self.generator.set_state(generators[self.world.rank].cpu())  # a generator's state is a CPU tensor
        self.update_idx, self.episodes_done, self.wall_s = state["update"], state["episodes"], state["wall_s"]
        self.counters = {**self.counters, **state["counters"]}

    # ---- one iteration -------------------------------------------------------------------
    def collect_batch(self, on_done=None) -> tuple[list[Episode], RolloutBatch]:
        """This update's episodes, played by the policy, and the batch of them on the trainer's device."""
        sizes = self.batch_sizes()
        size = sizes[self.update_idx] if self.update_idx < len(sizes) else self.cfg.episodes_per_update
        return self.actor.collect(self.update_idx, size, on_done)

    def batch_sizes(self) -> list[int]:
        """Episodes of each update of this run (``update_sizes`` of its config)."""
        cfg = self.cfg
        return update_sizes(cfg.total_episodes, cfg.episodes_per_update, cfg.group_size)

    def branch_values(self, episodes: list[Episode], batch: RolloutBatch) -> tuple[torch.Tensor | None, int]:
        """The values the algorithm asks the actor for (Monte-Carlo continuations) and the tokens their
        continuations generated; (None, 0) for an algorithm without branches."""
        if not self.algo.uses_branches:
            return None, 0
        return self.actor.turn_values(episodes, batch.action_mask)

    def update(self, batch: RolloutBatch, values: torch.Tensor | None = None) -> Update:
        """The learner's update on ``batch`` (with branch ``values`` where the algorithm uses them)."""
        try:
            return self.learner.update(batch, self.algo, values)
        except NonFiniteLoss as e:
            raise self.diverged(e) from None

    def diverged(self, error: NonFiniteLoss) -> TrainingDiverged:
        where = f"non-finite loss at update {self.update_idx + 1} ({error})"
        if all(torch.isfinite(p).all() for p in self.policy.parameters()):
            path = self.save_checkpoint("last_good")
            return TrainingDiverged(f"{where}; the policy before the failing step is saved in {path}")
        return TrainingDiverged(f"{where}; parameters are no longer finite, the last good checkpoint is the newest in "
                                f"{os.path.join(self.run_dir, 'checkpoints')}")

    # ---- the loop ----------------------------------------------------------------------
    def train(self, log: MetricsLog | None) -> dict | None:
        """Train to ``total_episodes``; the summary (None on a process other than the main one,
        which passes no ``log``)."""
        cfg, world = self.cfg, self.world
        sizes = self.batch_sizes()
        total_updates, played = len(sizes), sum(sizes)
        if played != cfg.total_episodes and self.update_idx == 0 and world.is_main:
            print(f"note: total_episodes {cfg.total_episodes} is not a multiple of group_size {cfg.group_size}; "
                  f"training plays {played} episodes (the last update's groups are whole; summary.json records "
                  f"train/episodes)", file=sys.stderr)
        bar = tqdm(total=played, initial=self.episodes_done, unit="ep", disable=not world.is_main,
                   desc=f"{cfg.algo} {cfg.env}", dynamic_ncols=True, mininterval=1.0)
        self.policy.train()
        with stop_on_ctrl_c() as stop:
            while self.update_idx < total_updates:
                self.train_one(log, bar, total_updates)
                if world.agree(stop.requested) and self.update_idx < total_updates:
                    bar.close()
                    raise Interrupted(self.update_idx, self.save_checkpoint())
        bar.close()
        return self.finish(log)

    def train_one(self, log: MetricsLog | None, bar: tqdm, total_updates: int) -> None:
        """Collect one batch, update on it, log and checkpoint (as the schedule says)."""
        cfg, world = self.cfg, self.world
        t0 = time.perf_counter()
        self.learner.set_lr(self.update_idx, total_updates)
        phase(bar, "collect")
        episodes, batch = self.collect_batch(on_done=lambda _: bar.update(world.size))
        t1 = time.perf_counter()
        if self.algo.uses_branches:
            phase(bar, "continuations")
        values, branch_tokens = self.branch_values(episodes, batch)
        branch_s = time.perf_counter() - t1
        phase(bar, "update")
        result = self.update(batch, values)
        t2 = time.perf_counter()
        # This update's cost, summed over every process.
        rollout_tokens, episodes_played, env_steps, generated, branch_tokens, trained = world.sum(torch.tensor([
            int(batch.attention_mask.sum()), len(episodes), sum(len(e.actions) for e in episodes),
            int(batch.action_mask.sum()) + branch_tokens, branch_tokens, result.tokens], device=self.device)).tolist()
        outcomes = world.gather([Outcome(e.ret, e.success, e.invalid) for e in episodes])
        self.update_idx += 1
        self.episodes_done += episodes_played
        self.wall_s += t2 - t0
        self.counters["train/env_steps"] += env_steps
        self.counters["perf/generated_tokens"] += generated
        self.counters["perf/branch_tokens"] += branch_tokens
        self.counters["perf/trained_tokens"] += trained
        row = {
            "update": self.update_idx,
            "train/episodes": self.episodes_done,
            **episode_metrics(outcomes, "train"),
            "train/episode_len_tokens": rollout_tokens / episodes_played,
            **result.stats,
            "train/lr": self.learner.optimizer.param_groups[0]["lr"],
            "perf/rollout_tokens_per_s": rollout_tokens / (t1 - t0),
            "perf/update_tokens_per_s": trained / (t2 - t1 - branch_s),
            "perf/wall_s": self.wall_s,
            **self.counters,
        }
        if self.algo.uses_branches:
            row["perf/branch_s"] = branch_s
        media = {}
        if world.is_main:  # the others go on to the next collect and wait for it at its first all-reduce
            if cfg.eval_every and self.update_idx % cfg.eval_every == 0:
                phase(bar, "eval")
                row.update(self.actor.evaluate(cfg.eval_episodes)[0])
            if self.algo.uses_critic and cfg.diag_every and self.update_idx % cfg.diag_every == 0:
                phase(bar, "diagnostics")
                diag, media = self.diagnose()
                row.update(diag)
            log.write(row, media)
        shown = {"ret": f"{row['train/return_mean']:+.2f}", "inv": f"{row['train/invalid_action_rate']:.2f}"}
        if "train/success_rate" in row:
            shown["win"] = f"{row['train/success_rate']:.2f}"
        bar.set_postfix(shown, refresh=False)
        if self.update_idx % cfg.checkpoint_every == 0 or self.update_idx == total_updates:
            self.save_checkpoint()

    def diagnose(self) -> tuple[dict, dict]:
        """Value diagnostics on held-out episodes: writes ``diagnostics/`` in the run folder. Returns the
        value/* metrics and the pass's cost (not counted in perf/wall_s, which both algos share), and the
        advantage maps' files for wandb."""
        t0 = time.perf_counter()
        # Its own generator: diagnostics on or off, training samples the same episodes.
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed * 1_000_003 + self.update_idx)
        report = diagnostics.diagnose(self.policy, self.tokenizer, self.actor.env.make, self.cfg, generator,
                                      self.max_action_tokens, self.device)
        maps = diagnostics.write_update(report, os.path.join(self.run_dir, "diagnostics"), self.update_idx)
        media = {f"diagnostics/{name}": path for name, path in maps.items()}
        return {**report.metrics, "perf/diag_s": time.perf_counter() - t0}, media

    def finish(self, log: MetricsLog | None) -> dict | None:
        """Final evaluation (as ``eval_greedy`` says, and sampled beside it: a greedy policy saturates
        long before the sampled one does), the final policy, summary.json and a few eval transcripts;
        on the main process (None elsewhere)."""
        cfg = self.cfg
        policy = self.learner.policy_state()
        if not self.world.is_main:
            return None
        metrics, episodes = self.actor.evaluate(cfg.final_eval_episodes)
        sampled = self.actor.evaluate(cfg.final_eval_episodes, greedy=False)[0] if cfg.eval_greedy else metrics
        metrics.update({f"{k}_sampled": sampled[k] for k in ("eval/success_rate", "eval/return_mean") if k in sampled})
        final = self.checkpoint_dir("final")
        self.policy.save_pretrained(final, self.tokenizer, policy)
        summary = {
            "env": cfg.env, "algo": cfg.algo, "seed": cfg.seed, "updates": self.update_idx,
            "train/episodes": self.episodes_done, "perf/wall_s": self.wall_s,
            "eval/episodes": cfg.final_eval_episodes, **metrics, **success_ci(metrics, cfg.final_eval_episodes),
            "checkpoint": os.path.abspath(final),
        }
        with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(self.run_dir, "eval_samples.jsonl"), "w") as f:
            for e in episodes[: cfg.eval_samples]:
                f.write(json.dumps({"seed": e.seed, "return": e.ret, "success": e.success, "invalid": e.invalid,
                                    "transcript": transcript(self.tokenizer, e)}) + "\n")
        log.summary(summary)
        return summary

    def close(self) -> None:
        self.actor.close()


def memory_estimate(policy, cfg: TrainConfig, rows: int, shards: int = 1) -> dict[str, float]:
    """What a run holds in memory before activations, in MB per process: the weights (policy LM, its
    value head and a separate critic), their gradients and Adam's two moments (fp32; each process keeps
    1/``shards`` of them under FSDP, though a backward holds the gradients whole until they are
    reduce-scattered), the KL reference's copy, and the rollout KV cache per 1,000 tokens of context
    for ``rows`` episodes at once."""
    mb = 2.0**-20
    weights = sum(p.numel() * p.element_size() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad) * 4 / shards
    config = policy.lm.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    cache_bytes = 2 if policy.autocast_dtype is not None else 4
    per_token = config.num_hidden_layers * 2 * kv_heads * head_dim * cache_bytes  # keys and values, every layer
    return {"weights": weights * mb, "gradients": trainable * mb, "adam": 2 * trainable * mb,
            "reference": sum(p.numel() * p.element_size() for p in policy.lm.parameters()) * mb if cfg.kl_coef else 0.0,
            "kv_cache_per_1k_tokens": per_token * 1000 * rows * mb}


def check_world_size(cfg: TrainConfig, processes: int) -> None:
    """Refuse a batch plan that N processes cannot share evenly (each update's episodes in whole
    groups per process, each minibatch split evenly): every process must take the same steps."""
    unit = processes * cfg.group_size
    uneven = [f"{name} {value} is not a multiple of {of}" for name, value, of in (
        ("episodes_per_update", cfg.episodes_per_update, unit), ("total_episodes", cfg.total_episodes, unit),
        ("minibatch_size", cfg.minibatch_size, processes)) if value % of]
    if processes > 1 and uneven:
        raise ConfigError(f"with {processes} processes (x group_size {cfg.group_size}), {'; '.join(uneven)}: each "
                          f"process plays an equal share of every update and of every minibatch")


def update_sizes(total_episodes: int, episodes_per_update: int, group_size: int) -> list[int]:
    """Episodes of each update: whole batches, then what is left as one smaller last batch (in whole
    groups, so a budget that is not a multiple of group_size is rounded up)."""
    full, rest = divmod(total_episodes, episodes_per_update)
    return [episodes_per_update] * full + ([math.ceil(rest / group_size) * group_size] if rest else [])


def phase(bar: tqdm, name: str) -> None:
    """Name what the run is doing on its progress bar (its count moves only while collecting)."""
    if bar.disable:  # a data-parallel process other than the main one
        return
    bar.set_description(f"{bar.desc.split(' | ')[0]} | {name}", refresh=True)


class _StopRequest:
    requested = False


@contextlib.contextmanager
def stop_on_ctrl_c():
    """While training: the first Ctrl-C asks the loop to stop at the end of the update (it then saves
    a checkpoint); a second one interrupts at once. Only the main thread can take signals, so
    elsewhere (a test's thread) Ctrl-C keeps its default."""
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        stop.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nstopping after this update to save a checkpoint (Ctrl-C again to quit at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, request)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
