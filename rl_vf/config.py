"""The one training config: a dataclass with documented fields, loaded from YAML + CLI flags.

Precedence: defaults < ``--config FILE.yaml`` < explicit command-line flags. Every field is also
a command-line flag (``lr`` -> ``--lr``, ``total_episodes`` -> ``--total-episodes``).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from rl_vf.advantages import BASELINES
from rl_vf.algos import ALGOS

WANDB_MODES = ("offline", "online", "disabled")
DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("constant", "linear")


class ConfigError(ValueError):
    """A bad config value or file; the CLI prints it and exits with code 2."""


def doc(text: str, default: Any = dataclasses.MISSING, **kw):
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class TrainConfig:
    # What to train.
    env: str = doc("Gymnasium env id, e.g. TicTacToe-v0, or my_module:MyEnv-v0 for your own text env", "TicTacToe-v0")
    env_kwargs: dict = doc("keyword arguments for gymnasium.make (YAML mapping or JSON on the command line)", {})
    algo: str = doc(f"credit assignment: {' | '.join(ALGOS)}", "ppo")
    seed: int = doc("seed for the model init, sampling and env resets", 0)
    total_episodes: int = doc("training episodes in all", 60_000)
    out: str = doc("run folder (default runs/<env>-<algo>-s<seed>-<time>)", "")
    model: str = doc("'tiny' (built-in character-level Llama) or a local Hugging Face causal-LM folder", "tiny")
    wandb: str = doc(f"wandb mode: {' | '.join(WANDB_MODES)}", "offline")
    wandb_group: str = doc("wandb group (compare puts the runs of one comparison in one group)", "")
    wandb_job_type: str = doc("wandb job_type (compare sets the variant name)", "")
    device: str = doc(f"{' | '.join(DEVICES)}", "auto")
    threads: int = doc("torch CPU threads (0: torch's default)", 0)
    # Built-in model size (model=tiny only).
    hidden_size: int = doc("tiny model: hidden size", 64)
    layers: int = doc("tiny model: transformer layers", 2)
    heads: int = doc("tiny model: attention heads", 4)
    intermediate_size: int = doc("tiny model: MLP width", 256)
    # Rollouts.
    episodes_per_update: int = doc("episodes collected per policy update", 1024)
    num_envs: int = doc("envs played in parallel (rows of the rollout batch)", 256)
    max_action_tokens: int = doc("an action ends at a newline, EOS or this many tokens (0: the env's Text action "
                                 "space max_length, or 64)", 0)
    constrain_actions: bool = doc("sample only stop tokens and tokens spelled with the env's action-space characters", True)
    group_size: int = doc("K episodes per initial state (needed >= 2 by baselines rloo and group)", 1)
    # Credit assignment.
    gamma: float = doc("discount, applied once per env step (turn), never per token", 1.0)
    lam: float = doc("GAE lambda (ppo)", 0.95)
    baseline: str = doc(f"REINFORCE baseline: {' | '.join(BASELINES)}", "mean")
    normalize_advantages: bool = doc("whiten advantages over the batch's action tokens", True)
    # Optimisation (shared by both algorithms: they differ only in the advantages).
    lr: float = doc("Adam learning rate", 1e-3)
    lr_schedule: str = doc(f"{' | '.join(LR_SCHEDULES)}: linear decays lr to 0 at total_episodes", "linear")
    epochs: int = doc("passes over each batch (1 = single-pass policy gradient)", 4)
    minibatch_size: int = doc("episodes per gradient step", 64)
    clip: float = doc("PPO ratio clip epsilon", 0.2)
    vf_clip: float = doc("value clip around the old values (0 disables)", 0.2)
    vf_coef: float = doc("value loss weight (ppo)", 0.5)
    ent_coef: float = doc("entropy bonus weight", 0.02)
    kl_coef: float = doc("KL penalty to the frozen initial policy (0 disables)", 0.0)
    target_kl: float = doc("stop an update's epochs early once approx_kl exceeds this (0 disables)", 0.0)
    max_grad_norm: float = doc("gradient norm clip", 1.0)
    # Warm start (`rl-vf pretrain`, or before RL when warm_start_demos > 0).
    warm_start_demos: int = doc("before RL, fit the policy to this many episodes of the env's demonstrator "
                                "(0: RL starts from --model as it is)", 0)
    warm_start_expert_prob: float = doc("chance that a demonstrated move is the expert's, else a random legal one", 0.8)
    warm_start_epochs: int = doc("supervised passes over the demonstrations", 8)
    warm_start_lr: float = doc("Adam learning rate of the warm start", 3e-3)
    # Evaluation, logging, checkpoints.
    eval_every: int = doc("evaluate every N updates (0 disables periodic eval)", 25)
    eval_episodes: int = doc("episodes per periodic evaluation", 200)
    final_eval_episodes: int = doc("episodes of the final evaluation written to summary.json", 1000)
    eval_greedy: bool = doc("evaluate the argmax policy (False: sample, as in training)", True)
    eval_samples: int = doc("eval transcripts saved to eval_samples.jsonl", 8)
    checkpoint_every: int = doc("save a checkpoint every N updates (and at the end)", 50)
    keep_checkpoints: int = doc("update checkpoints kept on disk (newest first)", 2)

    def validate(self) -> "TrainConfig":
        choice(self.algo, ALGOS, "algo")
        choice(self.baseline, BASELINES, "baseline")
        choice(self.wandb, WANDB_MODES, "wandb")
        choice(self.device, DEVICES, "device")
        choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        for name in ("total_episodes", "episodes_per_update", "num_envs", "group_size",
                     "epochs", "minibatch_size", "hidden_size", "layers", "heads", "intermediate_size", "warm_start_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warm_start_demos < 0:
            raise ConfigError(f"warm_start_demos must be >= 0 (0 = no warm start), got {self.warm_start_demos}")
        if not 0.0 <= self.warm_start_expert_prob <= 1.0:
            raise ConfigError(f"warm_start_expert_prob must be in [0, 1], got {self.warm_start_expert_prob}")
        for name in ("lr", "clip", "max_grad_norm", "warm_start_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma and lam must be in [0, 1], got gamma={self.gamma}, lam={self.lam}")
        if self.algo == "reinforce" and self.baseline in ("rloo", "group") and self.group_size < 2:
            raise ConfigError(f"baseline {self.baseline!r} needs group_size >= 2 (K episodes per initial state), "
                              f"got {self.group_size}")
        if self.episodes_per_update % self.group_size:
            raise ConfigError(f"episodes_per_update ({self.episodes_per_update}) must be a multiple of "
                              f"group_size ({self.group_size})")
        if self.max_action_tokens < 0:
            raise ConfigError(f"max_action_tokens must be >= 0 (0 = from the env), got {self.max_action_tokens}")
        if self.hidden_size % self.heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})")
        if not isinstance(self.env_kwargs, dict):
            raise ConfigError(f"env_kwargs must be a mapping, got {self.env_kwargs!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def choice(value, valid, name: str):
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(valid)}")


FIELDS = {f.name: f for f in fields(TrainConfig)}

# Defaults that an env overrides, tuned and measured per env (README "Results"). They sit between
# the dataclass defaults and the user's --config file and flags; config.yaml records the result.
ENV_DEFAULTS: dict[str, dict] = {
    # Episodes are ~4x longer than tic-tac-toe's: a warm start on the solver's games skips learning the
    # rules by trial and error, and smaller batches give more updates in the 15 minutes.
    "ConnectFour-v0": {"total_episodes": 14_000, "episodes_per_update": 512, "warm_start_demos": 2000},
}


def coerce(name: str, value):
    """Parse/check one value against the field's type (YAML values and CLI strings alike)."""
    kind = FIELDS[name].type
    if kind == "dict":
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as e:
                raise ConfigError(f"{name} must be a JSON object, got {value!r} ({e.msg})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return value
    if kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    try:
        if kind == "int":  # accepts 60000, "60000" and "6e4", not 2.5
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {kind}, got {value!r}") from None


def unknown_key(key: str, where: str) -> ConfigError:
    near = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return ConfigError(f"unknown config key {key!r} in {where}{hint}; valid keys: {', '.join(FIELDS)}")


def load_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of keys to values, got {type(data).__name__}")
    for key in data:
        if key not in FIELDS:
            raise unknown_key(key, path)
    return data


def make_config(*layers: dict) -> TrainConfig:
    """Defaults, then the env's own defaults (ENV_DEFAULTS), then each mapping in turn (later
    wins); coerced and validated."""
    merged: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in FIELDS:
                raise unknown_key(key, "the overrides")
            merged[key] = coerce(key, value)
    env_layer = ENV_DEFAULTS.get(merged.get("env", FIELDS["env"].default), {})
    return TrainConfig(**{**env_layer, **merged}).validate()
