"""The actor: opens envs, loads the policy for them, builds the rollout engine, plays training
batches and evaluations, and computes episode metrics. It also plays the branches an algorithm
asks for (``rl_vf.branches``: continuations of the current policy from mid-episode states)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import torch

import numpy as np

from rl_vf import branches
from rl_vf.config import ConfigError, TrainConfig
from rl_vf.engine import Episode, RolloutBatch, RolloutEngine, action_token_mask, copy_env
from rl_vf.policy import TINY, Critic, TinyConfig, enable_checkpointing, load_policy
from rl_vf.stats import wilson_interval
from rl_vf.tokenizer import DEFAULT_CHARS

EVAL_SEED_OFFSET = 2**62  # eval episodes never share a reset seed with training ones


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
    if cfg.lora_rank and policy.lora is None:  # (a LoRA checkpoint, e.g. a warm start, comes with its adapters)
        if model == TINY:
            raise ConfigError("lora_rank needs --model DIR, a saved model to adapt; the built-in tiny model trains in "
                              "full (lora_rank 0)")
        policy.add_adapters(model, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
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
    if cfg.gradient_checkpointing:  # takes effect only where gradients are taken: rollouts keep their cache
        for model in (policy.lm, policy.critic.trunk if policy.critic is not None else None):
            if model is not None:
                enable_checkpointing(model)
    return policy, tokenizer


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the policy autocasts its matmuls to (None: plain fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def episode_metrics(episodes: list[Episode], prefix: str) -> dict:
    """Mean return, invalid-action rate and, where the env defines success (an episode's ``success``
    is not None), the success rate (an episode that reports none counts as a failure)."""
    n = len(episodes)
    metrics = {f"{prefix}/return_mean": sum(e.ret for e in episodes) / n}
    if any(e.success is not None for e in episodes):
        metrics[f"{prefix}/success_rate"] = sum(bool(e.success) for e in episodes) / n
    metrics[f"{prefix}/invalid_action_rate"] = sum(e.invalid for e in episodes) / n
    return metrics


def engine_for(policy, tokenizer, make_env, cfg: TrainConfig, episodes: int, max_action_tokens: int,
               device, values: bool = True, snapshots: bool = False) -> RolloutEngine:
    """A rollout engine for ``episodes`` at a time, set up as ``cfg`` says (rows, env threads, decoding).
    ``values=False``: the episodes' sampling-time values are not needed (no separate critic pass);
    ``snapshots``: keep a copy of the env at every turn's start (to branch from)."""
    return RolloutEngine(policy, tokenizer, make_env, min(cfg.num_envs, episodes), max_action_tokens, device,
                         env_threads=cfg.env_threads, legal_only=cfg.constrain_actions == "legal", values=values,
                         snapshots=snapshots)


def check_branchable(make_env, env_id: str) -> None:
    """Refuse, with the env's name, an env whose state cannot be copied (branches need copies)."""
    env = make_env()
    try:
        env.reset(seed=0)
        copy_env(env, seed=0)
    except Exception as e:  # whatever deepcopy raises for this env's members
        raise ConfigError(f"env {env_id!r} cannot be copied ({type(e).__name__}: {e}); algo vine branches "
                          f"continuations from copies of it: give it clone() (envs/base.py TextEnv) or make it "
                          f"deep-copyable, or use another algo") from None
    finally:
        env.close()


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
    """The 95% Wilson interval of an evaluation's success rate (its uncertainty from finite episodes);
    nothing for an env without success."""
    if "eval/success_rate" not in metrics:
        return {}
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


class Actor:
    """Plays the policy in the run's envs: one training batch per update, and evaluations.

    ``generator`` is the run's sampling generator (shared with the learner's minibatch shuffles, so
    a run is one random stream and resumes exactly). ``shard``: (rank, processes) of a data-parallel
    run; each process plays its slice of every update's episodes."""

    def __init__(self, policy, tokenizer, cfg: TrainConfig, env: EnvInfo, eval_env: EnvInfo,
                 max_action_tokens: int, device: torch.device, generator: torch.Generator, branching: bool = False,
                 shard: tuple[int, int] = (0, 1)):
        self.policy, self.tokenizer, self.cfg, self.shard = policy, tokenizer, cfg, shard
        self.env, self.eval_env = env, eval_env
        self.max_action_tokens, self.device, self.generator = max_action_tokens, device, generator
        if branching:
            check_branchable(env.make, cfg.env)
        # The update recomputes values from the transcripts, so rollouts skip a separate critic.
        self.engine = engine_for(policy, tokenizer, env.make, cfg, cfg.episodes_per_update, max_action_tokens,
                                 device, values=False, snapshots=branching)
        self.branch_engine = engine_for(policy, tokenizer, env.make, cfg, cfg.num_envs, max_action_tokens, device,
                                        values=False) if branching else None

    def episode_seeds(self, update: int) -> list[int]:
        """Reset seeds of update ``update``'s episodes; the K members of a group share one."""
        cfg = self.cfg
        groups = cfg.episodes_per_update // cfg.group_size
        first = cfg.seed * 1_000_000_007 + update * groups  # seeds never overlap in practice
        return [first + i // cfg.group_size for i in range(cfg.episodes_per_update)]

    def collect(self, update: int, size: int, on_done=None) -> tuple[list[Episode], RolloutBatch]:
        """This process's slice of the first ``size`` of update ``update``'s episodes (a last batch can be
        smaller), played by the policy, and the batch of them on the device (``on_done``: called with
        each episode as it ends)."""
        rank, processes = self.shard
        share = size // processes
        seeds = self.episode_seeds(update)[rank * share:(rank + 1) * share]
        episodes = self.engine.collect(seeds, self.generator, on_done=on_done)
        batch = RolloutBatch.from_episodes(episodes, self.tokenizer.pad_token_id, self.cfg.group_size)
        return episodes, batch.to(self.device)

    def evaluate(self, episodes: int, greedy: bool | None = None) -> tuple[dict, list[Episode]]:
        """``episodes`` held-out episodes (greedy as ``cfg.eval_greedy`` unless given)."""
        cfg = self.cfg
        greedy = cfg.eval_greedy if greedy is None else greedy
        return evaluate(self.policy, self.tokenizer, self.eval_env.make, cfg, episodes, cfg.seed, greedy,
                        self.max_action_tokens, self.device)

    def turn_values(self, episodes: list[Episode], mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Monte-Carlo values of every turn's state (``cfg.vine_rollouts`` continuations each, on the
        batch's (B, T) action ``mask``), and the continuations' generated tokens."""
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=self.generator, device=self.device)))
        values, generated = branches.turn_values(self.branch_engine, episodes, self.cfg.vine_rollouts, self.cfg.gamma,
                                                 self.generator, rng)
        return branches.turn_values_tensor(values, mask), generated

    def close(self) -> None:
        self.engine.close()
        if self.branch_engine is not None:
            self.branch_engine.close()
