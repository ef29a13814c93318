"""The training loop: collect -> advantages -> update -> log -> eval -> checkpoint, repeat."""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import torch
import yaml
from tqdm.auto import tqdm

from rl_vf.algos import ALGOS
from rl_vf.algos.losses import kl_to_reference, masked_mean, policy_loss, value_loss, whiten
from rl_vf.config import ConfigError, TrainConfig
from rl_vf.engine import Episode, RolloutBatch, RolloutEngine, action_token_mask
from rl_vf.metrics_log import MetricsLog
from rl_vf.policy import Critic, TinyConfig, load_policy
from rl_vf.stats import wilson_interval
from rl_vf.tokenizer import DEFAULT_CHARS

STATE_FILE = "trainer_state.pt"
EVAL_SEED_OFFSET = 2**62  # eval episodes never share a reset seed with training ones


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the run stops and the last good policy stays on disk."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


@dataclass
class EnvInfo:
    """What the trainer reads off an env once: how to make it and its text spaces."""

    make: Callable[[], gym.Env]
    alphabet: str  # every character it shows or accepts (tiny model vocabulary)
    action_charset: str | None  # None: the action space is not Text
    action_tokens: int  # default action budget: the action space's max_length (more can only be invalid)
    lists_legal_actions: bool  # its legal_actions() lists every legal action (constrain_actions=legal works)


def open_env(env_id: str, env_kwargs: dict) -> EnvInfo:
    """Check ``env_id`` once (a bad id fails early with the valid choices) and describe it."""
    import envs  # registers the project's ids

    try:
        probe = gym.make(env_id, **env_kwargs)
    except (gym.error.Error, ImportError) as e:
        ours = ", ".join(envs.ENV_IDS)
        raise ConfigError(f"unknown env {env_id!r} ({e}); built-in ids: {ours}, or module:EnvId for your own") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad env_kwargs {env_kwargs!r} for {env_id}: {e}") from None
    spaces = [sp for sp in (probe.observation_space, probe.action_space) if isinstance(sp, gym.spaces.Text)]
    action = probe.action_space if isinstance(probe.action_space, gym.spaces.Text) else None
    complete = bool(getattr(probe.unwrapped, "legal_actions_complete", False))
    probe.close()
    return EnvInfo(
        make=lambda: gym.make(env_id, disable_env_checker=True, **env_kwargs),
        alphabet="".join("".join(sorted(sp.character_set)) for sp in spaces) or DEFAULT_CHARS,
        action_charset="".join(sorted(action.character_set)) if action else None,
        action_tokens=action.max_length if action else 64,
        lists_legal_actions=complete,
    )


def policy_for_env(model: str, cfg: TrainConfig, env: EnvInfo) -> tuple:
    """Load ``model`` ('tiny' or a folder) for this env: the tiny model gets the env's alphabet, and
    with ``cfg.constrain_actions`` (charset or legal) sampling is limited to tokens of the env's action space.

    ``cfg.critic`` decides the value function: ``separate`` keeps the folder's critic, or starts one
    as a copy of the policy and its value head; ``shared`` leaves any saved critic out.

    A folder's model keeps the attention window it was saved with, and ``cfg.attention_window`` is set
    to it, so the run's config.yaml records the window the policy really has."""
    tiny = TinyConfig(cfg.hidden_size, cfg.layers, cfg.heads, cfg.intermediate_size, cfg.attention_window)
    try:
        policy, tokenizer = load_policy(model, seed=cfg.seed, tiny=tiny, alphabet=env.alphabet)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load model {model!r}: {e}") from None
    cfg.attention_window = policy.attention_window
    if cfg.critic == "shared":
        policy.critic = None
    elif policy.critic is None:
        policy.critic = Critic.copy_of(policy)
    if cfg.constrain_actions == "legal" and not env.lists_legal_actions:
        raise ConfigError(f"constrain_actions=legal needs an env whose legal_actions() lists every legal action "
                          f"(legal_actions_complete, envs/base.py); {cfg.env} does not: use charset or none")
    if cfg.constrain_actions != "none" and env.action_charset is not None:
        policy.allowed_tokens = action_token_mask(tokenizer, env.action_charset)
    policy.autocast_dtype = autocast_dtype(cfg.precision, resolve_device(cfg.device))
    return policy, tokenizer


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the policy autocasts its matmuls to (None: plain fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def episode_metrics(episodes: list[Episode], prefix: str) -> dict:
    n = len(episodes)
    return {
        f"{prefix}/return_mean": sum(e.ret for e in episodes) / n,
        f"{prefix}/success_rate": sum(e.success for e in episodes) / n,
        f"{prefix}/invalid_action_rate": sum(e.invalid for e in episodes) / n,
    }


def engine_for(policy, tokenizer, make_env, cfg: TrainConfig, episodes: int, max_action_tokens: int,
               device, values: bool = True) -> RolloutEngine:
    """A rollout engine for ``episodes`` at a time, set up as ``cfg`` says (rows, env threads, decoding).
    ``values=False``: the episodes' sampling-time values are not needed (no separate critic pass)."""
    return RolloutEngine(policy, tokenizer, make_env, min(cfg.num_envs, episodes), max_action_tokens, device,
                         env_threads=cfg.env_threads, legal_only=cfg.constrain_actions == "legal", values=values)


def eval_seeds(seed: int, episodes: int, offset: int = EVAL_SEED_OFFSET) -> list[int]:
    """The reset seeds of an evaluation's episodes: fixed by ``seed``, disjoint from training's (and,
    with another ``offset``, from other held-out sets)."""
    return [offset + seed * 7919 + i for i in range(episodes)]


def evaluate(policy, tokenizer, make_env, cfg: TrainConfig, episodes: int, seed: int, greedy: bool,
             max_action_tokens: int, device) -> tuple[dict, list[Episode]]:
    """Play ``episodes`` fresh episodes with fixed reset seeds; returns eval/* metrics and the episodes."""
    engine = engine_for(policy, tokenizer, make_env, cfg, episodes, max_action_tokens, device, values=False)
    seeds = eval_seeds(seed, episodes)
    was_training = policy.training
    policy.eval()
    eps = engine.collect(seeds, torch.Generator(device=device).manual_seed(seed + EVAL_SEED_OFFSET), greedy=greedy)
    policy.train(was_training)
    engine.close()
    return episode_metrics(eps, "eval"), eps


def success_ci(metrics: dict, episodes: int) -> dict:
    """The 95% Wilson interval of an evaluation's success rate (its uncertainty from finite episodes)."""
    return {"eval/success_rate_ci95": list(wilson_interval(round(metrics["eval/success_rate"] * episodes), episodes))}


def transcript(tokenizer, episode: Episode) -> list[dict]:
    """The episode as alternating observation/action texts."""
    parts, start = [], 0
    mask = episode.action_mask
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[i - 1]:
            text = tokenizer.decode(episode.tokens[start:i], skip_special_tokens=True)
            parts.append({"action" if mask[start] else "observation": text})
            start = i
    return parts


@dataclass
class Update:
    """Numbers from one policy update, averaged over its minibatch steps."""

    stats: dict
    tokens: int


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str):
        self.cfg, self.run_dir = cfg, run_dir
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.env = open_env(cfg.env, cfg.env_kwargs)
        self.eval_env = open_env(cfg.env, cfg.eval_kwargs)
        self.max_action_tokens = cfg.max_action_tokens or self.env.action_tokens
        self.algo = ALGOS[cfg.algo]
        policy, self.tokenizer = policy_for_env(cfg.model, cfg, self.env)
        self.policy = policy.to(self.device)
        self.reference = None
        if cfg.kl_coef > 0:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
            self.reference.critic = None  # only its logprobs are read
        self.optimizer = adam(self.policy, cfg.lr)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)  # samples where the logits are
        # The update recomputes values from the transcripts, so rollouts skip a separate critic.
        self.engine = engine_for(self.policy, self.tokenizer, self.env.make, cfg, cfg.episodes_per_update,
                                 self.max_action_tokens, self.device, values=False)
        self.update_idx = 0
        self.episodes_done = 0
        self.wall_s = 0.0
        # Cumulative cost, for comparisons at equal compute (compare reads them off metrics.jsonl).
        self.counters = {"train/env_steps": 0, "perf/generated_tokens": 0, "perf/trained_tokens": 0}

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint_dir(self, name: str) -> str:
        return os.path.join(self.run_dir, "checkpoints", name)

    def save_checkpoint(self, name: str | None = None) -> str:
        path = self.checkpoint_dir(name or f"update_{self.update_idx:06d}")
        os.makedirs(path, exist_ok=True)
        self.policy.save_pretrained(path, self.tokenizer)
        torch.save({
            "update": self.update_idx, "episodes": self.episodes_done, "wall_s": self.wall_s, "counters": self.counters,
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
            "reference": self.reference.state_dict() if self.reference is not None else None,
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
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())  # a generator's state is a CPU tensor, even a CUDA one's
        if self.reference is not None and state["reference"] is not None:
            self.reference.load_state_dict(state["reference"])
        self.update_idx, self.episodes_done, self.wall_s = state["update"], state["episodes"], state["wall_s"]
        self.counters = dict(state["counters"])

    # ---- one iteration -------------------------------------------------------------------
    def collect_batch(self) -> tuple[list[Episode], RolloutBatch]:
        """This update's episodes, played by the policy, and the batch of them on the trainer's device."""
        episodes = self.engine.collect(self.episode_seeds(), self.generator)
        batch = RolloutBatch.from_episodes(episodes, self.tokenizer.pad_token_id, self.cfg.group_size)
        return episodes, batch.to(self.device)

    def episode_seeds(self) -> list[int]:
        """Reset seeds of this update's episodes; the K members of a group share one."""
        cfg = self.cfg
        groups = cfg.episodes_per_update // cfg.group_size
        first = cfg.seed * 1_000_000_007 + self.update_idx * groups  # seeds never overlap in practice
        return [first + i // cfg.group_size for i in range(cfg.episodes_per_update)]

    def update(self, batch: RolloutBatch) -> Update:
        cfg, policy = self.cfg, self.policy
        mask = batch.action_mask
        lengths = batch.attention_mask.sum(1)
        critic_only = self.update_idx < cfg.critic_warmup_updates  # a critic warm-up update (ppo only)
        with torch.no_grad():
            old = None
            if self.scores_before_update(len(batch)):
                old = score_batch(policy, batch, lengths, cfg.minibatch_size)
            ref = None
            if self.reference is not None and not critic_only:
                ref = score_batch(self.reference, batch, lengths, cfg.minibatch_size)["logprobs"]
            advantages, returns = self.algo.advantages(batch, old, cfg)
            stats = {}
            if returns is not None:
                stats["value/explained_variance"] = explained_variance(old["values"], returns, mask)
            if cfg.normalize_advantages:
                advantages = whiten(advantages, mask)
        # perf/trained_tokens counts a token once per transformer it is trained through: the policy
        # LM and a separate critic (a warm-up update runs only one of them).
        models = 1 if critic_only or policy.critic is None else 2

        totals: dict[str, float] = {}
        steps, tokens = 0, 0
        for epoch in range(cfg.epochs):
            epoch_kl = []
            for idx in torch.randperm(len(batch), generator=self.generator, device=self.device).split(cfg.minibatch_size):
                self.optimizer.zero_grad(set_to_none=True)
                step_terms: dict[str, float] = {}
                for sl, weight in minibatch_parts(lengths, mask, idx.to(self.device)):
                    loss, terms = self.part_loss(batch, sl, old, ref, advantages, returns, critic_only)
                    if not torch.isfinite(loss):
                        raise self.diverged({k: float(v.detach()) for k, v in terms.items()})
                    (loss * weight).backward()
                    for k, v in terms.items():
                        step_terms[k] = step_terms.get(k, 0.0) + float(v.detach() * weight)
                    tokens += int(batch.attention_mask[sl].sum()) * models
                clip_gradients(policy, cfg.max_grad_norm)
                self.optimizer.step()
                for k, v in step_terms.items():
                    totals[k] = totals.get(k, 0.0) + v
                if not critic_only:
                    epoch_kl.append(step_terms["ppo/approx_kl"])
                steps += 1
            if cfg.target_kl and epoch_kl and sum(epoch_kl) / len(epoch_kl) > cfg.target_kl:
                break
        stats.update({k: v / steps for k, v in totals.items()})
        stats["ppo/epochs"] = epoch + 1
        return Update(stats, tokens)

    def scores_before_update(self, batch_size: int) -> bool:
        """Whether an update first scores its batch (old log-probs, values). Not for one optimizer step
        without a critic: the policy has not moved since sampling, so the old log-probs are the new
        ones, detached (part_loss); a scoring pass would only repeat them."""
        cfg = self.cfg
        return self.algo.USES_CRITIC or cfg.epochs > 1 or cfg.minibatch_size < batch_size

    def part_loss(self, batch: RolloutBatch, sl, old: dict | None, ref: torch.Tensor | None, advantages: torch.Tensor,
                  returns: torch.Tensor | None, critic_only: bool) -> tuple[torch.Tensor, dict]:
        """The loss on one part ``sl`` of a minibatch, and its named terms (loss/*, ppo/* statistics).

        ``critic_only`` (critic warm-up): the value loss alone, scored so that the policy LM gets no
        gradient (``Policy.score_values``); the caller passes no reference then.
        """
        cfg, m = self.cfg, batch.action_mask[sl]
        if critic_only:
            new = self.policy.score_values(batch.tokens[sl], batch.attention_mask[sl])
            loss, terms = 0.0, {}
        else:
            new = self.policy.score(batch.tokens[sl], batch.attention_mask[sl], with_entropy=True, legal=batch.legal(sl))
            old_logprobs = new["logprobs"].detach() if old is None else old["logprobs"][sl]
            pg, pg_stats = policy_loss(new["logprobs"], old_logprobs, advantages[sl], m, cfg.clip)
            entropy = masked_mean(new["entropy"], m)
            terms = {"loss/pg": pg, "loss/entropy": entropy, **{f"ppo/{k}": v for k, v in pg_stats.items()}}
            loss = pg - cfg.ent_coef * entropy
        if self.algo.USES_CRITIC:
            vf = value_loss(new["values"], old["values"][sl], returns[sl], m, cfg.vf_clip or None)
            terms["loss/vf"] = vf
            loss = loss + cfg.vf_coef * vf
        if ref is not None:
            kl = kl_to_reference(new["logprobs"], ref[sl], m)
            terms["loss/kl"] = kl
            loss = loss + cfg.kl_coef * kl
        return loss, terms

    def set_lr(self, total_updates: int) -> None:
        """The lr for the coming update; computed from the update index, so resuming is exact."""
        cfg = self.cfg
        frac = 1 - self.update_idx / total_updates if cfg.lr_schedule == "linear" else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * frac

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
        total_updates = math.ceil(cfg.total_episodes / cfg.episodes_per_update)
        bar = tqdm(total=total_updates * cfg.episodes_per_update, initial=self.episodes_done, unit="ep",
                   desc=f"{cfg.algo} {cfg.env}", dynamic_ncols=True, mininterval=1.0)
        self.policy.train()
        while self.update_idx < total_updates:
            t0 = time.perf_counter()
            self.set_lr(total_updates)
            episodes, batch = self.collect_batch()
            t1 = time.perf_counter()
            result = self.update(batch)
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
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "perf/rollout_tokens_per_s": rollout_tokens / (t1 - t0),
                "perf/update_tokens_per_s": result.tokens / (t2 - t1),
                "perf/wall_s": self.wall_s,
                **self.counters,
            }
            if cfg.eval_every and self.update_idx % cfg.eval_every == 0:
                row.update(self.evaluate(cfg.eval_episodes)[0])
            media = {}
            if self.algo.USES_CRITIC and cfg.diag_every and self.update_idx % cfg.diag_every == 0:
                diag, media = self.diagnose()
                row.update(diag)
            log.write(row, media)
            bar.update(len(episodes))
            bar.set_postfix(ret=f"{row['train/return_mean']:+.2f}", win=f"{row['train/success_rate']:.2f}",
                            inv=f"{row['train/invalid_action_rate']:.2f}", refresh=False)
            if self.update_idx % cfg.checkpoint_every == 0 or self.update_idx == total_updates:
                self.save_checkpoint()
        bar.close()
        return self.finish(log)

    def evaluate(self, episodes: int) -> tuple[dict, list[Episode]]:
        cfg = self.cfg
        return evaluate(self.policy, self.tokenizer, self.eval_env.make, cfg, episodes, cfg.seed, cfg.eval_greedy,
                        self.max_action_tokens, self.device)

    def diagnose(self) -> tuple[dict, dict]:
        """Value diagnostics on held-out episodes: writes ``diagnostics/`` in the run folder. Returns the
        value/* metrics and the pass's cost (not counted in perf/wall_s, which both algos share), and the
        advantage maps' files for wandb."""
        from rl_vf import diagnostics  # it imports this module

        t0 = time.perf_counter()
        # Its own generator: diagnostics on or off, training samples the same episodes.
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed * 1_000_003 + self.update_idx)
        report = diagnostics.diagnose(self.policy, self.tokenizer, self.env.make, self.cfg, generator,
                                      self.max_action_tokens, self.device)
        maps = diagnostics.write_update(report, os.path.join(self.run_dir, "diagnostics"), self.update_idx)
        media = {f"diagnostics/{name}": path for name, path in maps.items()}
        return {**report.metrics, "perf/diag_s": time.perf_counter() - t0}, media

    def finish(self, log: MetricsLog) -> dict:
        """Final evaluation, the final policy, summary.json and a few eval transcripts."""
        cfg = self.cfg
        metrics, episodes = self.evaluate(cfg.final_eval_episodes)
        final = self.checkpoint_dir("final")
        self.policy.save_pretrained(final, self.tokenizer)
        summary = {
            "env": cfg.env, "algo": cfg.algo, "seed": cfg.seed, "updates": self.update_idx,
            "train/episodes": self.episodes_done, "perf/wall_s": self.wall_s,
            "eval/episodes": cfg.final_eval_episodes, **metrics, **success_ci(metrics, cfg.final_eval_episodes),
            "checkpoint": final,
        }
        with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        with open(os.path.join(self.run_dir, "eval_samples.jsonl"), "w") as f:
            for e in episodes[: cfg.eval_samples]:
                f.write(json.dumps({"seed": e.seed, "return": e.ret, "success": e.success, "invalid": e.invalid,
                                    "transcript": transcript(self.tokenizer, e)}) + "\n")
        log.summary(summary)
        return summary


def adam(module: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam over ``module``'s parameters; fused (one kernel for every parameter's update, not about
    ten per parameter) on the devices torch fuses it for."""
    params = list(module.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused)


def clip_gradients(policy, max_norm: float) -> None:
    """Clip the gradient norm of each separately trained network on its own (``Policy.parameter_groups``)."""
    for group in policy.parameter_groups():
        torch.nn.utils.clip_grad_norm_(group, max_norm)


def length_buckets(lengths: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
    """``idx`` regrouped by episode length, longest first: a group ends where the next episode is at
    most half as long as the group's longest, so padding a group to its longest at most doubles it."""
    order = idx[torch.argsort(lengths[idx], descending=True, stable=True)]
    sizes = lengths[order].tolist()
    groups, start = [], 0
    for i in range(1, len(sizes) + 1):
        if i == len(sizes) or 2 * sizes[i] <= sizes[start]:
            groups.append(order[start:i])
            start = i
    return groups


def minibatch_parts(lengths: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor):
    """One gradient step over minibatch ``idx``, as parts to accumulate: yields ``(rows, columns)``
    index pairs of length groups (so short episodes are not padded to the longest) and each part's
    weight, its share of the minibatch's action tokens. Summing ``weight * masked_mean(loss)`` over
    the parts gives the gradient of ``masked_mean(loss)`` over the whole minibatch."""
    action_tokens = mask[idx].sum()
    for part in length_buckets(lengths, idx):
        sl = (part, slice(0, int(lengths[part].max())))
        yield sl, mask[sl].sum() / action_tokens


@torch.no_grad()
def score_batch(policy, batch: RolloutBatch, lengths: torch.Tensor, chunk: int) -> dict:
    """``policy.score`` over the whole batch, run on length groups of at most ``chunk`` episodes."""
    out: dict[str, torch.Tensor] = {}
    for group in length_buckets(lengths, torch.arange(len(batch), device=lengths.device)):
        for part in group.split(chunk):
            width = int(lengths[part].max())
            sl = (part, slice(0, width))
            for key, value in policy.score(batch.tokens[sl], batch.attention_mask[sl], legal=batch.legal(sl)).items():
                out.setdefault(key, torch.zeros(batch.tokens.shape, dtype=value.dtype, device=value.device))
                out[key][sl] = value
    return out


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over action tokens (1 is perfect, <= 0 useless)."""
    m = mask.bool()
    var = returns[m].var()
    return float("nan") if var == 0 else float(1 - (returns[m] - values[m]).var() / var)


def write_config(cfg: TrainConfig, run_dir: str) -> None:
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
