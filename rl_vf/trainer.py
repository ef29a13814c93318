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

import torch
from tqdm.auto import tqdm

from rl_vf import diagnostics
from rl_vf.actor import Actor, episode_metrics, open_env, policy_for_env, resolve_device, success_ci, transcript
from rl_vf.algos import ALGOS
from rl_vf.config import TrainConfig
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


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str):
        self.cfg, self.run_dir = cfg, run_dir
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        env, eval_env = open_env(cfg.env, cfg.env_kwargs), open_env(cfg.env, cfg.eval_kwargs)
        self.max_action_tokens = cfg.max_action_tokens or env.action_tokens
        self.algo = ALGOS[cfg.algo]
        policy, self.tokenizer = policy_for_env(cfg.model, cfg, env)
        self.policy = policy.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)  # samples where the logits are
        self.learner = Learner(self.policy, cfg, self.device, self.generator)
        self.actor = Actor(self.policy, self.tokenizer, cfg, env, eval_env, self.max_action_tokens, self.device,
                           self.generator, branching=self.algo.uses_branches)
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
        path = self.checkpoint_dir(name or f"update_{self.update_idx:06d}")
        os.makedirs(path, exist_ok=True)
        self.policy.save_pretrained(path, self.tokenizer)
        torch.save({
            "update": self.update_idx, "episodes": self.episodes_done, "wall_s": self.wall_s, "counters": self.counters,
            "generator": self.generator.get_state(), **self.learner.state_dict(),
        }, os.path.join(path, STATE_FILE))
        if name is None:
            old = sorted(d for d in os.listdir(os.path.dirname(path)) if d.startswith("update_"))
            for stale in old[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(self.checkpoint_dir(stale))
        return path

    def load_checkpoint(self, path: str) -> None:
        policy, _ = load_policy(path)
        self.policy.load_state_dict(policy.state_dict())
        state = torch.load(os.path.join(path, STATE_FILE), map_location=self.device, weights_only=False)
        self.learner.load_state_dict(state)
        self.generator.set_state(state["generator"].cpu())  # a generator's state is a CPU tensor, even a CUDA one's
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

    def branch_values(self, episodes: list[Episode], batch: RolloutBatch) -> torch.Tensor | None:
        """The values the algorithm asks the actor for (Monte-Carlo continuations), with their cost
        counted as generated tokens; None for an algorithm without branches."""
        if not self.algo.uses_branches:
            return None
        values, generated = self.actor.turn_values(episodes, batch.action_mask)
        self.counters["perf/generated_tokens"] += generated
        self.counters["perf/branch_tokens"] += generated
        return values

    def update(self, batch: RolloutBatch, values: torch.Tensor | None = None) -> Update:
        """The learner's update on ``batch`` (with branch ``values`` where the algorithm uses them)."""
        try:
            return self.learner.update(batch, self.algo, values)
        except NonFiniteLoss as e:
            raise self.diverged(e.terms) from None

    def diverged(self, terms: dict) -> TrainingDiverged:
        where = f"non-finite loss at update {self.update_idx + 1} ({', '.join(f'{k}={v:.4g}' for k, v in terms.items())})"
        if all(torch.isfinite(p).all() for p in self.policy.parameters()):
            path = self.save_checkpoint("last_good")
            return TrainingDiverged(f"{where}; the policy before the failing step is saved in {path}")
        return TrainingDiverged(f"{where}; parameters are no longer finite, the last good checkpoint is the newest in "
                                f"{os.path.join(self.run_dir, 'checkpoints')}")

    # ---- the loop ----------------------------------------------------------------------
    def train(self, log: MetricsLog) -> dict:
        cfg = self.cfg
        sizes = self.batch_sizes()
        total_updates, played = len(sizes), sum(sizes)
        if played != cfg.total_episodes and self.update_idx == 0:
            print(f"note: total_episodes {cfg.total_episodes} is not a multiple of group_size {cfg.group_size}; "
                  f"training plays {played} episodes (the last update's groups are whole; summary.json records "
                  f"train/episodes)", file=sys.stderr)
        bar = tqdm(total=played, initial=self.episodes_done, unit="ep",
                   desc=f"{cfg.algo} {cfg.env}", dynamic_ncols=True, mininterval=1.0)
        self.policy.train()
        with stop_on_ctrl_c() as stop:
            while self.update_idx < total_updates:
                self.train_one(log, bar, total_updates)
                if stop.requested and self.update_idx < total_updates:
                    bar.close()
                    raise Interrupted(self.update_idx, self.save_checkpoint())
        bar.close()
        return self.finish(log)

    def train_one(self, log: MetricsLog, bar: tqdm, total_updates: int) -> None:
        """Collect one batch, update on it, log and checkpoint (as the schedule says)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        self.learner.set_lr(self.update_idx, total_updates)
        phase(bar, "collect")
        episodes, batch = self.collect_batch(on_done=lambda _: bar.update(1))
        t1 = time.perf_counter()
        if self.algo.uses_branches:
            phase(bar, "continuations")
        values = self.branch_values(episodes, batch)
        branch_s = time.perf_counter() - t1
        phase(bar, "update")
        result = self.update(batch, values)
        t2 = time.perf_counter()
        self.update_idx += 1
        self.episodes_done += len(episodes)
        self.wall_s += t2 - t0
        rollout_tokens = int(batch.attention_mask.sum())
        self.counters["train/env_steps"] += sum(len(e.actions) for e in episodes)
        self.counters["perf/generated_tokens"] += int(batch.action_mask.sum())
        self.counters["perf/trained_tokens"] += result.tokens
        row = {
            "update": self.update_idx,
            "train/episodes": self.episodes_done,
            **episode_metrics(episodes, "train"),
            "train/episode_len_tokens": rollout_tokens / len(episodes),
            **result.stats,
            "train/lr": self.learner.optimizer.param_groups[0]["lr"],
            "perf/rollout_tokens_per_s": rollout_tokens / (t1 - t0),
            "perf/update_tokens_per_s": result.tokens / (t2 - t1 - branch_s),
            "perf/wall_s": self.wall_s,
            **self.counters,
        }
        if self.algo.uses_branches:
            row["perf/branch_s"] = branch_s
        if cfg.eval_every and self.update_idx % cfg.eval_every == 0:
            phase(bar, "eval")
            row.update(self.actor.evaluate(cfg.eval_episodes)[0])
        media = {}
        if self.algo.uses_critic and cfg.diag_every and self.update_idx % cfg.diag_every == 0:
            phase(bar, "diagnostics")
            diag, media = self.diagnose()
            row.update(diag)
        log.write(row, media)
        bar.set_postfix(ret=f"{row['train/return_mean']:+.2f}", win=f"{row['train/success_rate']:.2f}",
                        inv=f"{row['train/invalid_action_rate']:.2f}", refresh=False)
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

    def finish(self, log: MetricsLog) -> dict:
        """Final evaluation (as ``eval_greedy`` says, and sampled beside it: a greedy policy saturates
        long before the sampled one does), the final policy, summary.json and a few eval transcripts."""
        cfg = self.cfg
        metrics, episodes = self.actor.evaluate(cfg.final_eval_episodes)
        sampled = self.actor.evaluate(cfg.final_eval_episodes, greedy=False)[0] if cfg.eval_greedy else metrics
        metrics["eval/success_rate_sampled"] = sampled["eval/success_rate"]
        metrics["eval/return_mean_sampled"] = sampled["eval/return_mean"]
        final = self.checkpoint_dir("final")
        self.policy.save_pretrained(final, self.tokenizer)
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


def update_sizes(total_episodes: int, episodes_per_update: int, group_size: int) -> list[int]:
    """Episodes of each update: whole batches, then what is left as one smaller last batch (in whole
    groups, so a budget that is not a multiple of group_size is rounded up)."""
    full, rest = divmod(total_episodes, episodes_per_update)
    return [episodes_per_update] * full + ([math.ceil(rest / group_size) * group_size] if rest else [])


def phase(bar: tqdm, name: str) -> None:
    """Name what the run is doing on its progress bar (its count moves only while collecting)."""
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
