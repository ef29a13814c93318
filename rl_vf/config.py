"""The one training config: a dataclass with documented fields, loaded from YAML + CLI flags.

Precedence: defaults < ``--config FILE.yaml`` < explicit command-line flags. Every field is also
a command-line flag (``lr`` -> ``--lr``, ``total_episodes`` -> ``--total-episodes``).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from rl_vf.advantages import BASELINES
from rl_vf.algos import ALGOS

WANDB_MODES = ("offline", "online", "disabled")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "linear")
CRITICS = ("auto", "shared", "separate")
CONSTRAINTS = ("none", "charset", "legal")


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
    eval_env_kwargs: dict = doc("keyword arguments that override env_kwargs in every evaluation (periodic, final, "
                                "the warm start's, rl-vf eval's default), e.g. train against {opponent: heuristic} "
                                "and evaluate against {opponent: random}", {})
    algo: str = doc(f"credit assignment: {' | '.join(ALGOS)}", "ppo")
    seed: int = doc("seed for the model init, sampling and env resets", 0)
    total_episodes: int = doc("training episodes in all (a remainder below episodes_per_update is one smaller last update)", 60_000)
    out: str = doc("run folder (default runs/<env>-<algo>-s<seed>-<time>)", "")
    model: str = doc("'tiny' (built-in character-level Llama) or a local Hugging Face causal-LM folder", "tiny")
    wandb: str = doc(f"wandb mode: {' | '.join(WANDB_MODES)}", "offline")
    wandb_group: str = doc("wandb group (compare puts the runs of one comparison in one group)", "")
    wandb_job_type: str = doc("wandb job_type (compare sets the variant name)", "")
    device: str = doc(f"{' | '.join(DEVICES)}", "auto")
    precision: str = doc(f"{' | '.join(PRECISIONS)}: bf16 autocasts the transformer's matmuls (logits, values and "
                         "losses stay fp32); auto is bf16 on CUDA, fp32 on the CPU", "auto")
    threads: int = doc("torch CPU threads (0: torch's default)", 0)
    lora_rank: int = doc("LoRA (peft) adapters of this rank on every linear layer of a --model DIR; only they and the "
                         "value head train, and the KL reference is the model with them off (0: train every weight)", 0)
    lora_alpha: float = doc("LoRA scale numerator (the adapters' output is scaled by lora_alpha / lora_rank)", 16.0)
    gradient_checkpointing: bool = doc("recompute each transformer layer's activations in the backward instead of "
                                       "keeping them (less memory for long transcripts, about a third more compute)",
                                       False)
    # Built-in model size (model=tiny only).
    hidden_size: int = doc("tiny model: hidden size", 64)
    layers: int = doc("tiny model: transformer layers", 2)
    heads: int = doc("tiny model: attention heads", 4)
    intermediate_size: int = doc("tiny model: MLP width", 256)
    attention_window: int = doc("tiny model: each token attends to at most this many tokens of its episode, itself "
                                "included (a sliding window, as in Mistral; a loaded model keeps the window it was "
                                "saved with); 0: the whole transcript", 0)
    # Rollouts.
    episodes_per_update: int = doc("episodes collected per policy update", 1024)
    num_envs: int = doc("envs played in parallel (rows of the rollout batch)", 256)
    env_threads: int = doc("threads stepping the envs and playing the warm start's demonstrations (>1 helps "
                           "envs whose step waits on a subprocess, e.g. "
                           "CodeFunction's sandbox; pure-Python envs gain nothing)", 1)
    max_action_tokens: int = doc("an action ends at a newline, EOS or this many tokens (0: the env's Text action "
                                 "space max_length, or 64)", 0)
    constrain_actions: str = doc(f"{' | '.join(CONSTRAINTS)}: charset samples only stop tokens and tokens spelled "
                                 "with the env's action-space characters; legal samples only the env's legal actions "
                                 "(envs that list them all: TicTacToe, ConnectFour, ChessEndgame, Chess, KeyToDoor), "
                                 "and the loss scores the same restricted distribution", "charset")
    group_size: int = doc("K episodes per initial state (needed >= 2 by baselines rloo and group)", 1)
    # Credit assignment.
    gamma: float = doc("discount, applied once per env step (turn), never per token; also to reinforce's "
                       "episode return", 1.0)
    lam: float = doc("GAE lambda (ppo, vine), applied once per turn like gamma (never per token): of the "
                     "advantages, and of ppo's value targets unless lam_critic is set", 0.95)
    lam_critic: float | None = doc("GAE lambda of the value targets (ppo; decoupled GAE as in VC-PPO/VAPO; 1.0: "
                                   "unbiased Monte-Carlo targets, not the critic's own bootstrap); none: the same "
                                   "as lam", 1.0)
    critic: str = doc("ppo value function: shared (a value head on the policy LM's trunk) | separate (a second model "
                      "of the same architecture with its own value head, starting as a copy of the policy's; saved in "
                      "checkpoints/*/critic/; each trained token then counts twice in perf/trained_tokens) | auto "
                      "(separate for ppo, measured faster than shared: docs/results.md; shared for algorithms "
                      "without a learned critic, which leave it unused)", "auto")
    critic_lr: float | None = doc("Adam learning rate of the value function (ppo: the separate critic, or the value "
                                  "head on a shared trunk); none: lr", None)
    critic_warmup_updates: int = doc("ppo: at most N updates at the start do not trust the critic: while the "
                                     "batch's value/bias, measured on its fresh episodes before the update, is "
                                     "above critic_warmup_bias, the policy learns from outcome-only advantages "
                                     "(REINFORCE with `baseline`) as the critic fits the returns", 8)
    critic_warmup_bias: float = doc("ppo: the critic warm-up ends at the first batch whose |value/bias| is at most "
                                    "this, or at most twice its standard error over the batch's episodes "
                                    "(value/bias_se), whichever is larger", 0.05)
    vine_rollouts: int = doc("vine: K continuations of the current policy from each turn's state; V is their "
                             "mean return", 4)
    baseline: str = doc(f"REINFORCE baseline: {' | '.join(BASELINES)}", "mean")
    normalize_advantages: bool = doc("whiten advantages over the batch's action tokens", True)
    # Optimisation (shared by both algorithms: they differ only in the advantages).
    lr: float = doc("Adam learning rate", 1e-3)
    lr_schedule: str = doc(f"{' | '.join(LR_SCHEDULES)}: linear decays lr to 0 at total_episodes", "linear")
    epochs: int = doc("passes over each batch (1 = single-pass policy gradient)", 4)
    minibatch_size: int = doc("episodes per gradient step", 64)
    update_tokens: int = doc("most padded tokens (episodes x longest transcript) one forward/backward pass of "
                             "the update holds; a minibatch with more is split into parts whose gradients add up "
                             "to the same step, so memory is bounded by this, not by transcript length", 16384)
    clip: float = doc("PPO ratio clip epsilon", 0.2)
    vf_clip: float = doc("value clip around the old values, in return units (0 disables)", 0.0)
    vf_coef: float = doc("value loss weight (ppo)", 0.5)
    ent_coef: float = doc("entropy bonus weight", 0.01)
    kl_coef: float = doc("KL penalty to the frozen initial policy (0 disables)", 0.0)
    target_kl: float = doc("stop an update's epochs early once approx_kl exceeds this (0 disables)", 0.0)
    max_grad_norm: float = doc("gradient norm clip", 1.0)
    # Warm start (`rl-vf pretrain`, or before RL when warm_start_demos > 0).
    warm_start_demos: int = doc("before RL, fit the policy to this many episodes of the env's demonstrator "
                                "(0: RL starts from --model as it is)", 0)
    warm_start_expert_prob: float = doc("chance that a demonstrated move is the expert's, else a random legal one", 0.8)
    warm_start_epochs: int = doc("supervised passes over the demonstrations", 8)
    warm_start_lr: float = doc("Adam learning rate of the warm start", 3e-3)
    warm_start_lr_schedule: str = doc(f"{' | '.join(LR_SCHEDULES)}: linear decays warm_start_lr to 0 over the "
                                      "warm start's steps", "constant")
    warm_start_cache: bool = doc("reuse a warm start computed before with the same settings, model and source "
                                 "(kept in $RL_VF_CACHE, default ~/.cache/rl_vf/warm_starts) instead of computing it "
                                 "again", True)
    # Evaluation, logging, checkpoints.
    eval_every: int = doc("evaluate every N updates (0 disables periodic eval)", 25)
    eval_episodes: int = doc("episodes per periodic evaluation", 200)
    final_eval_episodes: int = doc("episodes of the final evaluation written to summary.json", 1000)
    eval_greedy: bool = doc("evaluate the argmax policy (False: sample, as in training)", True)
    eval_samples: int = doc("eval transcripts saved to eval_samples.jsonl", 8)
    checkpoint_every: int = doc("save a checkpoint every N updates (and at the end)", 50)
    keep_checkpoints: int = doc("update checkpoints kept on disk (newest first)", 2)
    # Value diagnostics (ppo; rl_vf/diagnostics.py, README "Value diagnostics").
    diag_every: int = doc("run the value diagnostics every N updates (ppo only; 0 disables)", 50)
    diag_episodes: int = doc("held-out episodes per diagnostics pass (calibration, failure AUROC, advantage maps)", 256)
    diag_states: int = doc("mid-episode states per pass whose value is checked against Monte-Carlo continuations", 32)
    diag_rollouts: int = doc("K: continuations per state, and per action, for a Monte-Carlo value", 8)
    diag_actions: int = doc("M: distinct actions per state whose critic ordering is scored against Monte Carlo", 4)
    diag_drop_threshold: float = doc("the critic notices a decisive mistake once its value is below "
                                     "loss + this x (win - loss), in the env's exact values", 0.5)

    def validate(self) -> "TrainConfig":
        choice(self.algo, ALGOS, "algo")
        choice(self.baseline, BASELINES, "baseline")
        choice(self.wandb, WANDB_MODES, "wandb")
        choice(self.device, DEVICES, "device")
        choice(self.precision, PRECISIONS, "precision")
        choice(self.constrain_actions, CONSTRAINTS, "constrain_actions")
        choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        choice(self.warm_start_lr_schedule, LR_SCHEDULES, "warm_start_lr_schedule")
        choice(self.critic, CRITICS, "critic")
        if self.critic == "auto":  # resolved here, so config.yaml records the value function the run had
            self.critic = "separate" if ALGOS[self.algo].uses_critic and not self.lora_rank else "shared"
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be >= 0 (0 = no adapters), got {self.lora_rank}")
        if self.lora_rank and self.critic == "separate":
            raise ConfigError("lora_rank > 0 takes critic: shared (the value head on the adapted policy); a separate "
                              "critic would be a second full copy of the model")
        for name in ("total_episodes", "episodes_per_update", "num_envs", "group_size",
                     "epochs", "minibatch_size", "hidden_size", "layers", "heads", "intermediate_size", "warm_start_epochs",
                     "diag_episodes", "diag_states", "diag_rollouts", "env_threads", "vine_rollouts", "update_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.attention_window < 0:
            raise ConfigError(f"attention_window must be >= 0 (0: no window), got {self.attention_window}")
        if self.diag_every < 0:
            raise ConfigError(f"diag_every must be >= 0 (0 disables the value diagnostics), got {self.diag_every}")
        if self.diag_actions < 2:
            raise ConfigError(f"diag_actions must be >= 2 (actions are ranked in pairs), got {self.diag_actions}")
        if not 0.0 <= self.diag_drop_threshold <= 1.0:
            raise ConfigError(f"diag_drop_threshold must be in [0, 1], got {self.diag_drop_threshold}")
        if self.warm_start_demos < 0:
            raise ConfigError(f"warm_start_demos must be >= 0 (0 = no warm start), got {self.warm_start_demos}")
        if not 0.0 <= self.warm_start_expert_prob <= 1.0:
            raise ConfigError(f"warm_start_expert_prob must be in [0, 1], got {self.warm_start_expert_prob}")
        if self.critic_lr is not None and not self.critic_lr > 0:
            raise ConfigError(f"critic_lr must be > 0 (or none: lr), got {self.critic_lr}")
        if self.critic_warmup_bias < 0:
            raise ConfigError(f"critic_warmup_bias must be >= 0, got {self.critic_warmup_bias}")
        for name in ("lr", "clip", "max_grad_norm", "warm_start_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma and lam must be in [0, 1], got gamma={self.gamma}, lam={self.lam}")
        if self.lam_critic is not None and not 0 <= self.lam_critic <= 1:
            raise ConfigError(f"lam_critic must be in [0, 1] (or none: the same as lam), got {self.lam_critic}")
        if self.critic_warmup_updates < 0:
            raise ConfigError(f"critic_warmup_updates must be >= 0 (0 = no warm-up), got {self.critic_warmup_updates}")
        if not ALGOS[self.algo].uses_critic and self.critic != "shared":
            raise ConfigError(f"critic={self.critic!r} needs a learned value function; algo {self.algo!r} has none "
                              f"(use ppo, or critic: shared)")
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
        for name in ("env_kwargs", "eval_env_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        return self

    @property
    def eval_kwargs(self) -> dict:
        """The env's keyword arguments in evaluations: env_kwargs updated by eval_env_kwargs."""
        return {**self.env_kwargs, **self.eval_env_kwargs}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def choice(value, valid, name: str):
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(valid)}")


FIELDS = {f.name: f for f in fields(TrainConfig)}

# Every config key a warm start reads (tests/test_pretrain.py checks the list against what pretrain
# reads): `rl-vf pretrain`'s flags and the key of the warm-start cache (rl_vf/pretrain.py). It reads
# ``critic`` too, but drops the critic before training, so the arms of a comparison share one.
WARM_START_FIELDS = ("env", "env_kwargs", "eval_env_kwargs", "seed", "model", "device", "threads", "precision",
                     "hidden_size", "layers", "heads", "intermediate_size", "attention_window", "lora_rank",
                     "lora_alpha", "gradient_checkpointing", "max_action_tokens", "constrain_actions",
                     "warm_start_demos", "warm_start_expert_prob", "warm_start_epochs", "warm_start_lr",
                     "warm_start_lr_schedule", "minibatch_size", "update_tokens", "max_grad_norm", "num_envs",
                     "env_threads", "eval_greedy")


def flag(name: str) -> str:
    """The command-line flag of config key ``name``: ``total_episodes`` -> ``--total-episodes``."""
    return "--" + name.replace("_", "-")


# Defaults that an env overrides, tuned and measured per env (docs/results.md). They sit between
# the dataclass defaults and the user's --config file and flags; config.yaml records the result.
ENV_DEFAULTS: dict[str, dict] = {
    # Episodes are ~4x longer than tic-tac-toe's: a warm start on the solver's games skips learning the
    # rules by trial and error, and smaller batches give more updates in the 15 minutes. A window of 32
    # tokens (one board and the move before it) makes the latest board what the policy reads: imitation
    # of the expert's moves reached NLL 0.31 instead of 0.62 (docs/results.md, ConnectFour-v0). A
    # discount of 0.7 per turn (a sooner win scores more) took all 6 seeded runs to 0.80 (gamma 1: 3 of 6).
    # 6 warm-start epochs with a decaying lr teach what 8 at a constant one did (greedy win rate 0.691 for
    # both, mean of 3 seeds), in 3/4 of the time (docs/benchmark.md, "First update of every env").
    "ConnectFour-v0": {"total_episodes": 10_240, "episodes_per_update": 512, "warm_start_demos": 4000,
                       "warm_start_expert_prob": 1.0, "warm_start_epochs": 6, "warm_start_lr_schedule": "linear",
                       "attention_window": 32, "gamma": 0.7},
    # A tiny model does not discover carries by trial and error; 2000 worked examples (20% with an
    # off-by-one step or answer) teach the format and most of the addition, RL the rest. At lr 1e-3
    # the first update undoes the warm start (approx KL 1.0; REINFORCE never recovered); 3e-4 keeps it.
    "Arithmetic-v0": {"warm_start_demos": 2000, "lr": 3e-4},
    # The same for Countdown: from scratch a default run learnt nothing (greedy success 0.000, 62%
    # malformed); 2000 solver equations (10 s) and lr 3e-4 reached 0.549, lr 1e-3 0.360 (docs/results.md).
    "Countdown-v0": {"warm_start_demos": 2000, "lr": 3e-4},
    # Every episode runs its program in a fresh sandbox (~35 ms, threads run 8 side by side): fewer,
    # smaller updates after a warm start on the reference solutions, which are one line of at most
    # ~90 characters (128 tokens instead of the action space's 512 stops runaway samples early).
    # lr 1e-3 undid the warm start here too (greedy success 0.59 -> 0.34, 62% invalid programs); at
    # 3e-4 RL keeps it but does not improve on it yet (docs/results.md).
    "CodeFunction-v0": {"total_episodes": 6000, "episodes_per_update": 256, "warm_start_demos": 2000,
                        "env_threads": 8, "max_action_tokens": 128, "lr": 3e-4},
    # A character model does not learn to spell legal chess moves from a few thousand games (99.7% of
    # greedy KQK games ended on an illegal move); sampling among the legal moves lets it learn which.
    # The compact board (77 characters a turn instead of 164) halves a transcript; attention over it
    # is what an update spends its time on (first 64-game update of KQK: over 5 CPU minutes without,
    # 82 s with). A whole game of Chess-v0 is cut at 40 moves for the same reason (its first update
    # still takes about 140 CPU s; docs/benchmark.md, "First update of every env"). Transcripts of
    # 1,300-3,300 tokens make an update of 1024 games take over 10 minutes on a CPU, so the default
    # budgets are 16 updates of 128 (KQK) and 64 (a whole game) games. Evaluations play as many rows
    # at once as an update does: 256 rows of KQK transcripts took the final evaluation to 4.8 GB.
    "ChessEndgame-v0": {"total_episodes": 2048, "episodes_per_update": 128, "num_envs": 128,
                        "constrain_actions": "legal", "env_kwargs": {"compact": True}},
    "Chess-v0": {"total_episodes": 1024, "episodes_per_update": 64, "num_envs": 64, "constrain_actions": "legal",
                 "env_kwargs": {"compact": True, "max_moves": 40}},
}

# How long a whole `rl-vf train --env ID --threads 1` at the defaults above takes on the 2-core CPU
# machine (wall time with nothing else running; docs/benchmark.md, "Whole default runs", has the
# commands). `rl-vf train --help` lists it beside each env's defaults. The chess figures come from
# before the learner scored the action tokens alone, which made their first updates 1.5x faster.
DEFAULT_RUN_TIME: dict[str, str] = {
    "TicTacToe-v0": "9 min",
    "ConnectFour-v0": "11 min",
    "ChessEndgame-v0": "under 58 min",
    "Chess-v0": "not measured; under ~70 min estimated from its first update",
    "CodeFunction-v0": "11 min",
    "Arithmetic-v0": "4 min",
    "Countdown-v0": "6 min",
    "KeyToDoor-v0": "10 min",
    "Decisions-v0": "5 min",
    "DoomedStep-v0": "5 min",
    "ReasoningGym-v0": "48 min",
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
    if kind == "float | None" and (value is None or str(value).strip().lower() in ("none", "null", "")):
        return None
    if name == "constrain_actions" and isinstance(value, bool):  # run configs from when it was a bool
        return "charset" if value else "none"
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
        if kind in ("float", "float | None"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {kind}, got {value!r}") from None


def unknown_key(key: str, where: str) -> ConfigError:
    near = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return ConfigError(f"unknown config key {key!r} in {where}{hint}; valid keys: {', '.join(FIELDS)}")


def read_yaml(path: str, what: str):
    """The YAML document in ``path``; an unreadable file or invalid YAML is a ConfigError naming ``what``
    (e.g. "study file") and the path."""
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path!r} is not valid YAML: {' '.join(str(e).split())}") from None


def load_yaml(path: str) -> dict:
    data = read_yaml(path, "config file")
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
    wins; env_kwargs key by key over the env's own); coerced and validated."""
    merged: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in FIELDS:
                raise unknown_key(key, "the overrides")
            merged[key] = coerce(key, value)
    env_layer = ENV_DEFAULTS.get(merged.get("env", FIELDS["env"].default), {})
    if "env_kwargs" in env_layer and "env_kwargs" in merged:  # the user's keys over the env's, not instead
        merged["env_kwargs"] = {**env_layer["env_kwargs"], **merged["env_kwargs"]}
    return TrainConfig(**{**env_layer, **merged}).validate()


def write_config(cfg: TrainConfig, run_dir: str) -> None:
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
