"""rl_vf benchmark (issue 6): the engine, a naive rollout loop and TRL, side by side in one run.

    python experiments/bench.py [--quick] [--sections decode,multiturn,scaling,trl,update,branches,launch,parallel]
                                [--threads N] [--device auto|cpu|cuda] [--out FILE]

Prints one table per section to stdout (progress goes to stderr) and, as the last stdout line,
one JSON object with every figure (docs/benchmark.md lists the keys). Two model sizes: the
built-in tiny model (``TinyConfig()``, the trainer's default) and a ~10M-parameter config of the
same character-level Llama. Every comparison uses one model, one batch and one sampling rule
(plain multinomial at temperature 1: no top-k, no top-p, no action constraint).

1. decode: tokens/s of ``RolloutEngine._decode`` (the engine's own per-token loop on its
   ``_RowCache``) at batch 1, 16, 64, 256, against this machine's fp32 matmul GFLOP/s measured in
   the same run, as a % of the compute-bound limit (see ``flops_per_token``); and against the
   roofline of matmuls and memory traffic (see ``roofline_tok_s``), with the memory roof (read
   GB/s) also measured in the same run.
2. multiturn: episodes/s of ``RolloutEngine.collect`` (KV cache kept across turns) and of the
   naive loop (``naive_collect``: Hugging Face ``generate`` on each env's FULL transcript every
   turn, batched across envs with left padding, same stop tokens and action budget) on
   TicTacToe-v0 and KeyToDoor-v0 with delay 32 (34 turns).
   Like for like: an untrained policy writes mostly invalid actions, which end an episode at
   once and would turn a multi-turn benchmark into a single-turn one. Both approaches therefore
   play through ``LegalFallback``, which swaps an action the env would reject for its first legal
   action, so KeyToDoor episodes last exactly 34 turns in both and TicTacToe games last the
   3-5 moves a game takes. TicTacToe lengths still vary with the sampled moves, so the ratio
   is taken on turns/s (env steps/s); at equal mean length it equals the ratio of episodes/s.
   Both refill a finished env's row with the next episode, and both use the trainer's action
   budget (the action space's max_length: one token for these two envs), so a turn costs the
   engine a prefill of the new observation and the naive loop a forward over the transcript.
3. scaling: seconds per episode at 1, 4, 16, 64 turns (KeyToDoor, delay turns - 2; a time limit
   makes the 1-turn episode), each point playing the same number of turns in all, and the slope
   of log(time) against log(turns): ~1 is linear (engine), ~2 quadratic (naive, re-reading the
   transcript every turn; less while fixed per-call costs dominate).
4. trl: trl's GRPOTrainer against rl_vf's Trainer with REINFORCE and the "group" baseline (GRPO's
   advantage) on Arithmetic-v0 (2-digit addition, one action), from the same saved model folder
   (a warm start on worked examples, so that both have rewards to learn from), with the same
   prompts (the same reset seeds, in the same order), batch (prompts x generations), action
   budget, stop tokens (newline or EOS), learning rate, clip, grad-norm clip, one pass per batch,
   no KL, no entropy bonus, rewards scaled within the group, loss averaged over the batch's action
   tokens ("dapo"), fp32 on both sides. Samples/s are timed between the end of the first step
   and the end of the last (set-up and warm-up excluded); the learning curves (success rate per
   step) show both are solving the same problem.
5. update: trained tokens/s of ``Trainer.update`` (PPO with a value head, and REINFORCE) on one
   collected TicTacToe batch (played through ``LegalFallback`` so its games are full length), and
   the peak RSS of two short default ``python -m rl_vf train`` runs in a subprocess each: TicTacToe
   and a first ChessEndgame-v0 update of 64 games (KQK at its defaults: the longest transcripts).
6. branches: the Monte-Carlo value arm's continuations (``rl_vf.branches.turn_values``: K from the
   start of every turn, each from a copy of the env and a fork of the episode's KV cache) against
   plain rollouts, in generated tokens/s, on KeyToDoor-v0 with delay 16 (18 turns). The policy
   samples only "0" and "1", so every episode and continuation plays to the door. Also the same
   continuations started from their transcripts (``Start``: each prefix prefilled again), to show
   what the fork saves.
7. launch: seconds per short run (TicTacToe, 16 episodes, no warm start) started as compare and
   sweep start their runs (a process forked from a server that imported rl_vf once) and as a fresh
   ``python -m rl_vf train`` subprocess, the same runs one after another, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, fields, replace

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401  (registers the ids)
from rl_vf import branches
from rl_vf.advantages import turn_starts
from rl_vf.config import ENV_DEFAULTS, TrainConfig, make_config
from rl_vf.distributed import launch_command
from rl_vf.engine import RolloutBatch, RolloutEngine, Start, _RowCache, stop_token_mask
from rl_vf.policy import TinyConfig, load_policy
from rl_vf.pretrain import demo_episodes, pretrain
from rl_vf.tokenizer import DEFAULT_CHARS, SPECIAL_TOKENS
from rl_vf.actor import open_env, policy_for_env, resolve_device
from rl_vf.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {
    "tiny": TinyConfig(),
    # ~10M parameters: Llama's gated MLP has three matrices, so MLP 1024 (not 4 x 384) lands near 10M.
    "10m": TinyConfig(hidden_size=384, layers=6, heads=6, intermediate_size=1024),
}
SECTIONS = {  # name: what it measures (--help)
    "decode": "engine decode tokens/s at batch 1-256, and as a % of the fp32 matmul roof",
    "multiturn": "episodes/s of the engine and of naive per-turn generate (TicTacToe, KeyToDoor delay 32)",
    "scaling": "seconds per episode at 1, 4, 16, 64 turns, and the log-log slope, for both",
    "trl": "samples/s and success curves: trl GRPOTrainer vs rl_vf reinforce/group on Arithmetic-v0",
    "update": "update tokens/s (ppo, reinforce) and the peak RSS of short `rl_vf train` runs (TicTacToe, chess)",
    "branches": "continuation tokens/s of the MC value arm (forked KV cache) vs plain rollout tokens/s",
    "launch": "seconds per short run: compare's forked launch vs a fresh `python -m rl_vf train` subprocess",
    "parallel": "training episodes/s of one TicTacToe run as 2 data-parallel processes vs 1 (1 thread each)",
    "fsdp": "peak RSS per process and training seconds of a 2-process run of a 34M-parameter model, DDP vs FSDP",
}
ARITHMETIC = {"op": "add", "digits": 2, "mode": "single"}


@dataclass(frozen=True)
class Scale:
    """How much work each section does: the full run, or ``--quick`` (a smoke test)."""

    models: tuple = tuple(SIZES.items())  # (size, TinyConfig): the models the per-size sections build
    matmul_n: int = 2048
    memory_mb: int = 512  # the buffer the memory roof reads: far larger than the caches
    decode_batches: tuple = (1, 16, 64, 256)
    decode_tokens: int = 64
    prompt_tokens: int = 16
    multiturn_envs: int = 64
    multiturn_episodes: tuple = (("tiny", 256), ("10m", 64))  # KeyToDoor episodes; TicTacToe plays 8x
    scaling_turns: tuple = (1, 4, 16, 64)
    scaling_envs: int = 16
    scaling_turn_budget: int = 1024  # turns played per point (episodes = this / turns, at least one per env)
    trl_prompts: int = 8
    trl_generations: int = 8
    trl_steps: int = 32
    trl_lr: float = 3e-4  # Arithmetic-v0's RL default: 1e-3 undoes a warm start (docs/results.md, Arithmetic-v0)
    trl_demos: int = 2000  # the warm start both trainers begin from (Arithmetic-v0's default)
    update_episodes: tuple = (("tiny", 256), ("10m", 64))
    train_episodes: int = 2048  # the RSS run: two updates of the default 1024 episodes
    train_args: tuple = ()  # further `rl_vf train` flags for that run
    chess_episodes: int = 64  # the chess RSS run: one update of this many KQK games
    scoring_demos: int = 64  # the ConnectFour warm-start step timed with the action tokens' scoring and without
    scoring_repeats: int = 3  # timings of each, alternating; the best counts
    launch_runs: int = 4  # short runs per way of starting them
    launch_warmup: int = 1  # runs first, not counted (the first forked run also starts the server)
    parallel_episodes: int = 2048  # the data-parallel run: this many TicTacToe episodes ...
    parallel_batch: int = 512  # ... in updates of this many (each of 2 processes plays half)
    parallel_rounds: int = 3  # rounds of both runs, their order alternating (a shared machine's speed drifts)
    branch_episodes: tuple = (("tiny", 64), ("10m", 16))  # KeyToDoor episodes whose every turn is branched
    branch_rollouts: int = 4  # K continuations per turn (vine_rollouts' default)
    fsdp_model: tuple = ("--hidden-size", "512", "--layers", "8", "--heads", "8", "--intermediate-size", "2048")
    fsdp_episodes: int = 64  # two updates of this many / 2 TicTacToe episodes

    def model(self, size: str) -> TinyConfig:
        return dict(self.models)[size]


FULL = Scale()
# The smoke test's "10m" is a small stand-in: it runs the 10m rows' code, not their cost.
QUICK = Scale(models=(("tiny", SIZES["tiny"]), ("10m", TinyConfig(hidden_size=96, layers=2, heads=2,
                                                                  intermediate_size=256))),
              matmul_n=512, memory_mb=16, decode_tokens=4, prompt_tokens=4, multiturn_envs=4,
              multiturn_episodes=(("tiny", 4), ("10m", 4)), scaling_envs=2, scaling_turn_budget=16,
              trl_prompts=2, trl_generations=2, trl_steps=2, trl_demos=8, update_episodes=(("tiny", 8), ("10m", 4)),
              train_episodes=64, branch_episodes=(("tiny", 2), ("10m", 1)), branch_rollouts=2,
              train_args=("--episodes-per-update", "32", "--num-envs", "32", "--final-eval-episodes", "32",
                          "--eval-every", "0"), chess_episodes=2, launch_runs=1, launch_warmup=0,
              parallel_episodes=64, parallel_batch=32, parallel_rounds=1, scoring_demos=4, scoring_repeats=1,
              fsdp_model=("--hidden-size", "64", "--layers", "2", "--heads", "2", "--intermediate-size", "128"),
              fsdp_episodes=16)


# ---- helpers -----------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """``(fn(), seconds)``; the device is synchronised on both sides so queued GPU work counts."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def fmt(value) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [header] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for r in cells:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    sys.stdout.flush()


def build(model: TinyConfig, device: torch.device):
    """The untrained tiny-Llama policy of shape ``model`` (seed 0) and its tokenizer, on ``device``."""
    policy, tokenizer = load_policy("tiny", seed=0, tiny=model, alphabet=DEFAULT_CHARS)
    return policy.to(device).eval(), tokenizer


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stop_ids(tokenizer) -> list[int]:
    """The tokens that end an action in the engine (newline or EOS), for ``generate``."""
    return stop_token_mask(tokenizer).nonzero().squeeze(1).tolist()


def action_text(tokenizer, tokens: list[int]) -> str:
    """An action's text as the engine reads it: up to the first newline, special tokens dropped."""
    return tokenizer.decode(tokens, skip_special_tokens=True).split("\n", 1)[0]


# ---- 1. decode ---------------------------------------------------------------------------------
def matmul_gflops(n: int, device: torch.device, reps: int = 5, tries: int = 3) -> float:
    """fp32 GFLOP/s of an n x n matmul at torch's configured thread count: the compute-bound roof.
    The best of a few tries, since a roof is a peak (and the first call also pays the warm-up)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = min(timed(lambda: [a @ b for _ in range(reps)], device)[1] for _ in range(tries))
    return 2 * n**3 * reps / seconds / 1e9


def memory_gb_s(megabytes: int, device: torch.device, tries: int = 3) -> float:
    """GB/s of reading (summing) a buffer far larger than the caches: the memory roof, the best of a
    few tries, as the KV cache at batch 256 is read once per decoded token."""
    x = torch.ones(megabytes * 2**20 // 4, device=device)
    seconds = min(timed(lambda: x.sum(), device)[1] for _ in range(tries))
    return x.numel() * 4 / seconds / 1e9


def roofs(scale: Scale, device: torch.device) -> tuple[float, float]:
    """(matmul GFLOP/s, memory GB/s) of this machine now."""
    return matmul_gflops(scale.matmul_n, device), memory_gb_s(scale.memory_mb, device)


def flops_per_token(policy, context: float) -> float:
    """Forward FLOPs for one token that attends to ``context`` cached tokens:
    2 x non-embedding params (one multiply-add per weight; value head included)
    + 2 x V x d for the LM head (tied to the embedding, but still a matmul; a lookup costs nothing)
    + 4 x layers x context x d for attention (Q.K^T and the weighted sum of V, 2 FLOPs per multiply-add)."""
    lm = policy.lm
    emb, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    non_embedding = param_count(policy) - emb.numel() - (0 if head is emb else head.numel())
    return 2 * non_embedding + 2 * head.numel() + 4 * lm.config.num_hidden_layers * context * lm.config.hidden_size


def cache_bytes_per_token(policy, context: float) -> float:
    """Bytes of cached keys and values that one decoded token's attention reads: every layer's
    keys and values over ``context`` columns."""
    config = policy.lm.config
    kv_dim = config.num_key_value_heads * (getattr(config, "head_dim", None)
                                           or config.hidden_size // config.num_attention_heads)
    return 2 * config.num_hidden_layers * context * kv_dim * next(policy.parameters()).element_size()


def roofline_tok_s(policy, context: float, batch: int, gflops: float, gb_s: float) -> float:
    """The decode's ceiling on this machine, in tokens/s. Per step: the matmuls at the matmul roof
    (or, when reading the weights once takes longer, at the memory roof), then attention reading
    every row's cached keys and values at the memory roof: one after the other, as a CPU runs them
    (a GPU overlaps kernels, so there it is a loose bound). Elementwise work counts as free."""
    weight_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    matmuls = max(batch * flops_per_token(policy, 0) / (gflops * 1e9), weight_bytes / (gb_s * 1e9))
    attention = batch * cache_bytes_per_token(policy, context) / (gb_s * 1e9)
    return batch / (matmuls + attention)


def decode_tok_s(policy, tokenizer, batch: int, scale: Scale, device: torch.device,
                 static_decode: bool | None = None) -> float:
    """Tokens/s of the engine's decode loop: prefill a random prompt, then sample
    ``scale.decode_tokens`` tokens per row (stop tokens disabled, so every row decodes them all).
    ``static_decode``: the engine's option (default: CUDA graphs on a GPU; their capture is timed too)."""
    engine = RolloutEngine(policy, tokenizer, make_env=None, num_envs=0, max_action_tokens=scale.decode_tokens,
                           device=device, static_decode=static_decode)
    engine.stop = torch.zeros_like(engine.stop)
    gen = torch.Generator(device=device).manual_seed(batch)
    shape = (batch, scale.prompt_tokens)
    prompt = torch.randint(len(SPECIAL_TOKENS), len(tokenizer), shape, device=device, generator=gen)  # no specials
    kv = _RowCache(policy, batch, device, engine.max_action_tokens)
    with torch.no_grad():
        logits, values = kv.forward(prompt, torch.ones_like(prompt, dtype=torch.bool))
        _, seconds = timed(lambda: engine._decode(kv, logits, values, gen, greedy=False), device)
    return batch * scale.decode_tokens / seconds


def bench_decode(scale: Scale, device: torch.device) -> dict:
    log(f"decode: fp32 matmul {scale.matmul_n}^3 and a {scale.memory_mb} MB read ...")
    before = roofs(scale, device)
    figures, policies = {}, {}
    context = scale.prompt_tokens + scale.decode_tokens / 2  # mean cached length while decoding
    for size, model in scale.models:
        policy, tokenizer = policies[size] = build(model, device)
        figures[f"params_{size}"] = param_count(policy)
        figures[f"flops_per_token_{size}"] = flops_per_token(policy, context)
        decode_tok_s(policy, tokenizer, 16, replace(scale, decode_tokens=2), device)  # warm-up
        for batch in scale.decode_batches:
            log(f"decode: {size} batch {batch} ...")
            figures[f"decode_tok_s_b{batch}_{size}"] = decode_tok_s(policy, tokenizer, batch, scale, device)
            if device.type == "cuda":  # the same decode without CUDA graphs (kernels launched one by one)
                figures[f"decode_tok_s_b{batch}_{size}_no_graphs"] = decode_tok_s(
                    policy, tokenizer, batch, scale, device, static_decode=False)
    # A roof is a peak: measured before and after the decodes, the higher counts (a shared
    # machine's neighbours can halve one measurement).
    log("decode: the roofs again ...")
    gflops, gb_s = (max(pair) for pair in zip(before, roofs(scale, device)))
    figures["matmul_gflops"], figures["memory_gb_s"] = gflops, gb_s
    rows = []
    for size, (policy, _) in policies.items():
        for batch in scale.decode_batches:
            tok_s = figures[f"decode_tok_s_b{batch}_{size}"]
            pct = 100 * tok_s * figures[f"flops_per_token_{size}"] / (gflops * 1e9)
            figures[f"decode_pct_of_matmul_b{batch}_{size}"] = pct
            roofline = 100 * tok_s / roofline_tok_s(policy, context, batch, gflops, gb_s)
            figures[f"decode_pct_of_roofline_b{batch}_{size}"] = roofline
            row = [size, f"{figures[f'params_{size}']:,}", batch, tok_s, f"{pct:.2f}%", f"{roofline:.1f}%"]
            if device.type == "cuda":
                eager = figures[f"decode_tok_s_b{batch}_{size}_no_graphs"]
                row += [eager, f"{tok_s / eager:.2f}x"]
            rows.append(row)
    graph_columns = ["tokens/s without CUDA graphs", "graphs / without"] if device.type == "cuda" else []
    table(f"1. Engine decode ({scale.decode_tokens} tokens after a {scale.prompt_tokens}-token prompt; "
          f"fp32 matmul {gflops:.1f} GFLOP/s and memory {gb_s:.1f} GB/s on {torch.get_num_threads()} threads)",
          ["model", "params", "batch", "tokens/s", "% of matmul roof", "% of roofline", *graph_columns], rows)
    return figures


# ---- 2 + 3. multi-turn rollouts: engine vs naive -----------------------------------------------
class LegalFallback(gym.ActionWrapper):
    """Swaps an action the env would reject for its first legal action, so an untrained policy's
    garbage does not end the episode: its length is then the game's, the same for both approaches."""

    def action(self, action: str) -> str:
        legal = self.env.unwrapped.legal_actions()
        return action if action.strip() in legal else legal[0]


def tictactoe():
    return LegalFallback(gym.make("TicTacToe-v0", disable_env_checker=True))


def key_to_door(turns: int):
    """KeyToDoor episodes of exactly ``turns`` turns: key, turns - 2 distractors, door (a time limit
    cuts the one-turn case after the key)."""
    return lambda: LegalFallback(gym.make("KeyToDoor-v0", delay=max(turns - 2, 0), max_episode_steps=turns,
                                          disable_env_checker=True))


def action_budget(env_id: str) -> int:
    """The trainer's default action budget for ``env_id`` (its action space's max_length)."""
    return open_env(env_id, {}).action_tokens


def engine_collect(policy, tokenizer, make_env, envs: int, episodes: int, budget: int, device) -> list[int]:
    """Turns per episode of ``episodes`` episodes played by rl_vf's engine on ``envs`` rows."""
    engine = RolloutEngine(policy, tokenizer, make_env, envs, budget, device)
    played = engine.collect(list(range(episodes)), torch.Generator(device=device).manual_seed(0))
    engine.close()
    return [len(e.actions) for e in played]


@torch.no_grad()
def naive_collect(policy, tokenizer, make_env, envs: int, episodes: int, budget: int, device) -> list[int]:
    """The same episodes played as a user would without a persistent KV cache: every turn, one
    batched ``generate`` over each live env's FULL transcript so far (left-padded), then env.step.
    Finished rows are refilled with the next episode, as the engine does. Returns turns per episode."""
    lm, pad, stops = policy.lm, tokenizer.pad_token_id, set(stop_ids(tokenizer))
    torch.manual_seed(0)
    turns = [0] * episodes

    def start(env, episode: int) -> list:
        obs, _ = env.reset(seed=episode)
        return [env, episode, [tokenizer.bos_token_id] + tokenizer.encode(obs, add_special_tokens=False)]

    rows = [start(make_env(), i) for i in range(min(envs, episodes))]  # [env, episode, transcript tokens]
    next_episode = len(rows)
    while rows:
        lengths = torch.tensor([len(r[2]) for r in rows])
        width = int(lengths.max())
        ids = torch.tensor([[pad] * (width - len(r[2])) + r[2] for r in rows], device=device)
        # From the lengths, not ids != pad: an unconstrained policy may sample the pad token itself.
        attention = (torch.arange(width)[None, :] >= width - lengths[:, None]).long().to(device)
        out = lm.generate(ids, attention_mask=attention, max_new_tokens=budget, do_sample=True,
                          temperature=1.0, top_k=0, top_p=1.0, eos_token_id=sorted(stops), pad_token_id=pad)
        live = []
        for (env, episode, transcript), new in zip(rows, out[:, width:].tolist()):
            cut = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))  # keep the stop token
            obs, _, terminated, truncated, _ = env.step(action_text(tokenizer, new[:cut]))
            turns[episode] += 1
            if not (terminated or truncated):
                transcript += new[:cut] + tokenizer.encode(obs, add_special_tokens=False)
                live.append([env, episode, transcript])
            elif next_episode < episodes:
                live.append(start(env, next_episode))
                next_episode += 1
            else:
                env.close()
        rows = live
    return turns


APPROACHES = {"engine": engine_collect, "naive": naive_collect}


def play(approach: str, policy, tokenizer, make_env, envs, episodes, budget, device) -> tuple[list[int], float]:
    """``(turns per episode, seconds)`` of one approach, after a two-episode warm-up (first calls
    pay for allocations and lazy set-up that a long run amortises)."""
    collect = APPROACHES[approach]
    collect(policy, tokenizer, make_env, min(envs, 2), 2, budget, device)
    return timed(lambda: collect(policy, tokenizer, make_env, envs, episodes, budget, device), device)


def bench_multiturn(scale: Scale, device: torch.device) -> dict:
    # TicTacToe plays 8x the episodes: at 3-5 turns against KeyToDoor's 34 that is about as many
    # turns, so its timing is not a fraction of a second that run-to-run noise swamps.
    cases = {"tictactoe": ("TicTacToe-v0", tictactoe, 8), "keytodoor32": ("KeyToDoor-v0", key_to_door(34), 1)}
    figures, rows = {}, []
    for size, base in scale.multiturn_episodes:
        policy, tokenizer = build(scale.model(size), device)
        for name, (env_id, make_env, factor) in cases.items():
            episodes = base * factor
            budget = action_budget(env_id)
            rate = {}
            for approach in APPROACHES:
                log(f"multiturn: {name} {size} {approach} ({episodes} episodes on {scale.multiturn_envs} envs) ...")
                turns, seconds = play(approach, policy, tokenizer, make_env, scale.multiturn_envs, episodes, budget,
                                      device)
                rate[approach] = sum(turns) / seconds
                figures[f"{name}_{approach}_ep_s_{size}"] = episodes / seconds
                figures[f"{name}_{approach}_turns_s_{size}"] = rate[approach]
                figures[f"{name}_{approach}_turns_per_ep_{size}"] = sum(turns) / episodes
                rows.append([name, size, approach, episodes / seconds, rate[approach], sum(turns) / episodes])
            figures[f"{name}_engine_over_naive_{size}"] = rate["engine"] / rate["naive"]
            rows.append([name, size, "engine / naive", "", f"{rate['engine'] / rate['naive']:.2f}x", ""])
    table(f"2. Multi-turn rollouts ({scale.multiturn_envs} envs in parallel; ratio of turns/s)",
          ["env", "model", "approach", "episodes/s", "turns/s", "turns/episode"], rows)
    return figures


def bench_scaling(scale: Scale, device: torch.device) -> dict:
    """Seconds per episode against episode length; each point plays about the same number of turns."""
    figures, rows = {}, []
    budget = action_budget("KeyToDoor-v0")
    for size, model in scale.models:
        policy, tokenizer = build(model, device)
        for approach in APPROACHES:
            seconds_per_episode = []
            for turns in scale.scaling_turns:
                episodes = max(scale.scaling_envs, scale.scaling_turn_budget // turns)
                log(f"scaling: {size} {approach} {turns} turns ({episodes} episodes) ...")
                played, seconds = play(approach, policy, tokenizer, key_to_door(turns), scale.scaling_envs, episodes,
                                       budget, device)
                assert set(played) == {turns}, f"expected {turns}-turn episodes, got {sorted(set(played))}"
                seconds_per_episode.append(seconds / episodes)
                figures[f"scaling_{approach}_s_per_ep_t{turns}_{size}"] = seconds / episodes
            slope = float(np.polyfit(np.log(scale.scaling_turns), np.log(seconds_per_episode), 1)[0])
            figures[f"scaling_{approach}_slope_{size}"] = slope
            rows.append([size, approach, *seconds_per_episode, f"{slope:.2f}"])
    table(f"3. Seconds per episode against turns (KeyToDoor, {scale.scaling_envs} envs; slope of log-log fit)",
          ["model", "approach", *(f"{t} turns" for t in scale.scaling_turns), "slope"], rows)
    return figures


# ---- 4. end to end against TRL -----------------------------------------------------------------
def save_arithmetic_model(folder: str, scale: Scale, device: torch.device, threads: int) -> str:
    """The tiny model warm-started on ``scale.trl_demos`` worked Arithmetic-v0 examples (``rl_vf
    pretrain``: it then solves a quarter to a third of the problems it samples, so the learning
    curves start above zero), saved for both trainers to load. Its generation config lists every stop
    token, so TRL's generate stops (and masks) at a newline like the engine."""
    cfg = TrainConfig(env="Arithmetic-v0", env_kwargs=ARITHMETIC, warm_start_demos=scale.trl_demos, device=device.type,
                      threads=threads).validate()
    warm = os.path.join(folder, "warm_start")
    pretrain(cfg, warm, scale.trl_prompts)
    policy, tokenizer = load_policy(os.path.join(warm, "checkpoints", "final"))
    policy.lm.generation_config.eos_token_id = stop_ids(tokenizer)
    model = os.path.join(folder, "model")
    policy.save_pretrained(model, tokenizer)
    return model


def run_rl_vf(model_dir: str, scale: Scale, device: torch.device, threads: int, run_dir: str):
    """REINFORCE with the group baseline: ``(step end times, success per step, reset seeds per step)``."""
    batch = scale.trl_prompts * scale.trl_generations
    cfg = TrainConfig(env="Arithmetic-v0", env_kwargs=ARITHMETIC, model=model_dir, device=device.type, precision="fp32",
                      threads=threads,
                      algo="reinforce", baseline="group", group_size=scale.trl_generations, episodes_per_update=batch,
                      num_envs=batch, minibatch_size=batch, epochs=1, lr=scale.trl_lr, lr_schedule="constant",
                      ent_coef=0.0, kl_coef=0.0, normalize_advantages=False, constrain_actions="none").validate()
    trainer = Trainer(cfg, run_dir)
    trainer.policy.train()
    ends, success, seeds = [], [], []
    for _ in range(scale.trl_steps):  # Trainer.train's loop, without its logging, evaluation and checkpoints
        episodes, batch = trainer.collect_batch()
        trainer.update(batch)
        trainer.update_idx += 1
        sync(device)
        ends.append(time.perf_counter())
        success.append(sum(e.success for e in episodes) / len(episodes))
        seeds.extend(e.seed for e in episodes[:: cfg.group_size])
    return ends, success, seeds


def run_trl(model_dir: str, scale: Scale, device: torch.device, seeds: list[int], out_dir: str):
    """trl's GRPOTrainer on the same prompts: ``(step end times, success per step)``."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    env = gym.make("Arithmetic-v0", disable_env_checker=True, **ARITHMETIC)
    prompts = [env.reset(seed=s)[0] for s in seeds]
    success = []

    def env_reward(prompts, completions, seed, **kwargs):
        """The env's reward for each completion, read as the engine reads an action."""
        rewards = []
        for text, s in zip(completions, seed):
            env.reset(seed=s)
            rewards.append(env.step(text.split("\n", 1)[0])[1])
        success.append(sum(r > 0 for r in rewards) / len(rewards))
        return rewards

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.ends.append(time.perf_counter())

    # trl checkpoints activations by default; transformers renamed the switch (gradient_ -> activation_).
    names = {f.name for f in fields(GRPOConfig)}
    checkpointing = next(name for name in ("activation_checkpointing", "gradient_checkpointing") if name in names)
    config = GRPOConfig(
        output_dir=out_dir, report_to="none", use_cpu=device.type == "cpu", bf16=False, **{checkpointing: False},
        per_device_train_batch_size=scale.trl_prompts * scale.trl_generations, num_generations=scale.trl_generations,
        gradient_accumulation_steps=1, max_steps=scale.trl_steps, max_completion_length=action_budget("Arithmetic-v0"),
        learning_rate=scale.trl_lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, beta=0.0,
        num_iterations=1, epsilon=0.2, scale_rewards="group", loss_type="dapo", temperature=1.0, top_p=1.0, top_k=0,
        shuffle_dataset=False, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
    )
    # BOS first, as the engine starts every transcript (the char tokenizer adds none by itself).
    dataset = Dataset.from_dict({"prompt": ["<bos>" + p for p in prompts], "seed": seeds})
    callback = StepEnds()
    trainer = GRPOTrainer(model=model_dir, reward_funcs=env_reward, args=config, train_dataset=dataset,
                          callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # it prints to stdout, which is the table's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers deprecations that trl still triggers
        trainer.train()
    return callback.ends, success


def bench_trl(scale: Scale, device: torch.device, threads: int) -> dict:
    batch = scale.trl_prompts * scale.trl_generations
    with tempfile.TemporaryDirectory() as tmp:
        log(f"trl: the warm start both begin from ({scale.trl_demos} worked examples) ...")
        model_dir = save_arithmetic_model(tmp, scale, device, threads)
        log(f"trl: rl_vf REINFORCE/group, {scale.trl_steps} steps of {batch} samples ...")
        rl_ends, rl_success, seeds = run_rl_vf(model_dir, scale, device, threads, os.path.join(tmp, "rl_vf"))
        log(f"trl: trl GRPOTrainer, {scale.trl_steps} steps of {batch} samples ...")
        trl_ends, trl_success = run_trl(model_dir, scale, device, seeds, os.path.join(tmp, "trl"))
    rate = {name: batch * (len(ends) - 1) / (ends[-1] - ends[0])
            for name, ends in (("rl_vf", rl_ends), ("trl", trl_ends))}
    figures = {"trl_grpo_samples_s": rate["trl"], "rl_vf_reinforce_group_samples_s": rate["rl_vf"],
               "rl_vf_over_trl": rate["rl_vf"] / rate["trl"],
               "trl_grpo_success_curve": trl_success, "rl_vf_reinforce_group_success_curve": rl_success}
    span = max(1, scale.trl_steps // 4)  # the table shows the curves as means over spans of steps

    def curve(success: list[float]) -> str:
        return " ".join(f"{np.mean(success[i:i + span]):.2f}" for i in range(0, len(success), span))

    table(f"4. End to end on Arithmetic-v0 (2-digit addition): {scale.trl_prompts} prompts x {scale.trl_generations} "
          f"generations per step, {scale.trl_steps} steps", ["trainer", "samples/s", f"success rate per {span} steps"],
          [["trl GRPOTrainer", rate["trl"], curve(trl_success)],
           ["rl_vf reinforce/group", rate["rl_vf"], curve(rl_success)],
           ["rl_vf / trl", f"{rate['rl_vf'] / rate['trl']:.2f}x", ""]])
    return figures


# ---- 5. training step and memory ---------------------------------------------------------------
def update_tok_s(tiny: TinyConfig, episodes: int, device: torch.device, threads: int, run_dir: str) -> dict:
    """Trained tokens/s of a ``Trainer.update`` per algorithm, on the same collected TicTacToe batch: the
    faster of two updates in a row (a first call also pays one-time set-up, 10-20% of it)."""
    rates, batch = {}, None
    for algo in ("ppo", "reinforce"):
        cfg = TrainConfig(algo=algo, episodes_per_update=episodes, num_envs=episodes, device=device.type,
                          threads=threads, hidden_size=tiny.hidden_size, layers=tiny.layers, heads=tiny.heads,
                          intermediate_size=tiny.intermediate_size,
                          critic_warmup_updates=0).validate()  # a full ppo update, not a critic-only one
        trainer = Trainer(cfg, run_dir)  # same seed, so both start from the same weights
        if batch is None:
            engine = RolloutEngine(trainer.policy, trainer.tokenizer, tictactoe, episodes, trainer.max_action_tokens,
                                   device)
            played = engine.collect(trainer.actor.episode_seeds(trainer.update_idx), torch.Generator(device=device).manual_seed(0))
            batch = RolloutBatch.from_episodes(played, trainer.tokenizer.pad_token_id).to(device)
        trainer.policy.train()
        timings = [timed(lambda: trainer.update(batch), device) for _ in range(2)]
        rates[algo] = max(result.tokens / seconds for result, seconds in timings)
    return rates


def scoring_step_s(demos: int, repeats: int, device: torch.device, threads: int) -> dict:
    """Seconds of one ConnectFour-v0 warm-start step at its defaults (forward and backward of the NLL of
    ``demos`` demonstrations' action tokens, 3% of their tokens): ``Policy.score`` on the action tokens
    alone (the last layer and the head at the positions that read them) and on every token. Each is
    timed ``repeats`` times, alternating; the best counts."""
    cfg = make_config(ENV_DEFAULTS["ConnectFour-v0"], {"env": "ConnectFour-v0", "warm_start_demos": demos,
                                                      "threads": threads, "device": device.type})
    env_info = open_env(cfg.env, cfg.env_kwargs)
    policy, tokenizer = policy_for_env(cfg.model, cfg, env_info)
    policy = policy.to(device)
    batch = RolloutBatch.from_episodes(demo_episodes(env_info.make, cfg, tokenizer, env_info.action_tokens, None),
                                       tokenizer.pad_token_id).to(device)
    mask = batch.action_mask

    def step(scored):
        policy.zero_grad(set_to_none=True)
        out = policy.score(batch.tokens, batch.attention_mask, scored=scored)
        (-(out["logprobs"] * mask).sum() / mask.sum()).backward()

    seconds = {"actions": [], "all": []}
    for _ in range(repeats):
        seconds["actions"].append(timed(lambda: step(mask), device)[1])
        seconds["all"].append(timed(lambda: step(None), device)[1])
    return {k: min(v) for k, v in seconds.items()}


def child_peak_rss_mb(cmd: list[str], env: dict | None = None) -> float:
    """Peak RSS (MB) of a process running ``cmd`` (with ``env`` added to the environment). Linux starts a
    new process's peak at its parent's (the high-water mark survives fork and exec), and this process
    holds models by then, so ``cmd`` runs under a small Python process that reports its own child's
    peak (wait4)."""
    probe = ("import os, subprocess, sys\n"
             "proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
             "_, status, usage = os.wait4(proc.pid, 0)\n"
             "print(usage.ru_maxrss)\n"  # kB on Linux
             "sys.exit(os.waitstatus_to_exitcode(status))")
    done = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return int(done.stdout.split()[-1]) / 1024


def train_cmd(run_dir: str, device: torch.device, threads: int, *flags: str) -> list[str]:
    return [sys.executable, "-m", "rl_vf", "train", "--wandb", "disabled", "--out", run_dir, "--device", device.type,
            "--threads", str(threads), *flags]


def bench_update(scale: Scale, device: torch.device, threads: int) -> dict:
    figures, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for size, episodes in scale.update_episodes:
            log(f"update: {size}, {episodes} TicTacToe episodes, ppo and reinforce ...")
            for algo, tok_s in update_tok_s(scale.model(size), episodes, device, threads, tmp).items():
                figures[f"update_tok_s_{algo}_{size}"] = tok_s
                rows.append([f"update tokens/s, {algo} ({size}, {episodes} episodes, default epochs/minibatch)", tok_s])
        log(f"update: a ConnectFour-v0 warm-start step of {scale.scoring_demos} demos, scoring the action tokens or all ...")
        step = scoring_step_s(scale.scoring_demos, scale.scoring_repeats, device, threads)
        figures.update({f"warm_start_step_s_{k}": v for k, v in step.items()})
        rows.append([f"ConnectFour-v0 warm-start step, {scale.scoring_demos} demos: s scoring the action tokens / "
                     f"every token / ratio", f"{fmt(step['actions'])} / {fmt(step['all'])} / "
                     f"{step['all'] / step['actions']:.2f}x"])
        log(f"update: peak RSS of `rl_vf train --total-episodes {scale.train_episodes}` ...")
        figures["train_peak_rss_mb"] = child_peak_rss_mb(train_cmd(
            os.path.join(tmp, "run"), device, threads, "--total-episodes", str(scale.train_episodes), *scale.train_args))
        rows.append([f"peak RSS of `python -m rl_vf train --total-episodes {scale.train_episodes}` (MB)",
                     figures["train_peak_rss_mb"]])
        log(f"update: peak RSS of a first ChessEndgame-v0 update of {scale.chess_episodes} games ...")
        figures["chess_update_peak_rss_mb"] = child_peak_rss_mb(train_cmd(
            os.path.join(tmp, "chess"), device, threads, "--env", "ChessEndgame-v0", "--total-episodes",
            str(scale.chess_episodes), "--final-eval-episodes", "1", "--eval-samples", "1"))
        rows.append([f"peak RSS of `python -m rl_vf train --env ChessEndgame-v0 --total-episodes {scale.chess_episodes}` "
                     f"(MB; one update, final eval of 1 game)", figures["chess_update_peak_rss_mb"]])
    table("5. Training step and memory", ["measure", "value"], rows)
    return figures


def bench_launch(scale: Scale, device: torch.device, threads: int) -> dict:
    """Seconds per short run started as compare starts them (forked from a preloaded server) and as a
    fresh interpreter, one run at a time, alternating."""
    from rl_vf import compare

    flags = ["--env", "TicTacToe-v0", "--total-episodes", "16", "--episodes-per-update", "16", "--num-envs", "16",
             "--final-eval-episodes", "16", "--eval-every", "0", "--warm-start-demos", "0"]
    seconds = {"forked": [], "subprocess": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(scale.launch_warmup + scale.launch_runs):
            log(f"launch: run {i + 1} of {scale.launch_warmup + scale.launch_runs}, forked and subprocess ...")
            argv = train_cmd(os.path.join(tmp, f"f{i}"), device, threads, *flags)[3:]
            start = time.perf_counter()
            if compare.run_forked(argv, os.path.join(tmp, f"f{i}.log")):
                raise RuntimeError(f"a forked run failed; its log: {os.path.join(tmp, f'f{i}.log')}")
            if i >= scale.launch_warmup:
                seconds["forked"].append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run(train_cmd(os.path.join(tmp, f"s{i}"), device, threads, *flags), cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if i >= scale.launch_warmup:
                seconds["subprocess"].append(time.perf_counter() - start)
    forked, fresh = (float(np.mean(seconds[k])) for k in ("forked", "subprocess"))
    table(f"7. Starting a run (TicTacToe, 16 episodes, mean of {scale.launch_runs} runs each)",
          ["how", "seconds per run", "/ subprocess"],
          [["forked from rl_vf's preloaded server (compare, sweep)", forked, forked / fresh],
           ["fresh `python -m rl_vf train` subprocess", fresh, 1.0]])
    return {"launch_forked_s": forked, "launch_subprocess_s": fresh, "launch_ratio": forked / fresh}


def bench_parallel(scale: Scale, device: torch.device) -> dict:
    """One TicTacToe run (ppo) as 1 process and as 2 data-parallel processes (accelerate launch), 1 thread
    each: episodes per second of the training loop (the runs' ``perf/wall_s``: start-up and the final
    evaluation left out) and the CPU seconds of the whole command. ``scale.parallel_rounds`` rounds of
    both, one after the other, 1 process first in odd rounds and last in even ones: a shared machine's
    speed drifts by tens of percent over minutes, so each round's ratio compares runs minutes apart, and
    the figures are the medians over rounds."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        log("parallel: 2 processes need 2 GPUs and torch sees 1: measured on the CPU")
        device = torch.device("cpu")
    flags = ["--env", "TicTacToe-v0", "--total-episodes", str(scale.parallel_episodes), "--episodes-per-update",
             str(scale.parallel_batch), "--final-eval-episodes", "16", "--eval-every", "0"]
    runs = {1: [], 2: []}  # processes -> [(training wall s, CPU s, episodes/s)] by round
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(scale.parallel_rounds):
            for processes in (1, 2) if round_ % 2 == 0 else (2, 1):
                runs[processes].append(parallel_run(processes, flags, os.path.join(tmp, f"r{round_}p{processes}"),
                                                    device, f"round {round_ + 1} of {scale.parallel_rounds}"))
    ratios = [two[2] / one[2] for one, two in zip(runs[1], runs[2])]
    rows = [[i + 1, p, *runs[p][i], ratio if p == 2 else 1.0] for i, ratio in enumerate(ratios) for p in (1, 2)]
    figures = {f"parallel_{p}p_{name}": statistics.median(run[i] for run in runs[p])
               for p in (1, 2) for i, name in ((2, "episodes_per_s"), (1, "cpu_s"))}
    figures.update(parallel_speedup=statistics.median(ratios), parallel_speedup_min=min(ratios),
                   parallel_speedup_max=max(ratios))
    table(f"8. Data-parallel training on {device.type} (TicTacToe ppo, {scale.parallel_episodes} episodes, batch "
          f"{scale.parallel_batch}; 2 / 1 process per round: median {figures['parallel_speedup']:.2f}x, "
          f"{min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} round(s))",
          ["round", "processes x 1 thread", "training wall s", "CPU s (whole command)", "episodes/s",
           "/ 1 process (same round)"], rows)
    return figures


def parallel_run(processes: int, flags: list[str], run_dir: str, device: torch.device,
                 label: str) -> tuple[float, float, float]:
    """One ``bench_parallel`` run on ``processes`` processes: its training wall seconds, the CPU seconds
    of the whole command (every process and the launcher) and its episodes per second."""
    cmd = train_cmd(run_dir, device, 1, *flags)
    if processes > 1:
        cmd = launch_command(processes) + cmd[3:]  # in place of `python -m rl_vf`
    log(f"parallel ({label}): TicTacToe, {processes} process(es) x 1 thread ...")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return summary["perf/wall_s"], cpu, summary["train/episodes"] / summary["perf/wall_s"]


def bench_fsdp(scale: Scale, device: torch.device) -> dict:
    """The same 2-process TicTacToe ppo run (a larger model, 2 updates) data-parallel (DDP: every process
    holds the gradients and Adam's state whole) and sharded (``--fsdp``: half of each): the peak RSS of
    the largest process and the training seconds (the run's ``perf/wall_s``). glibc keeps freed blocks
    under its mmap threshold (up to 32 MB) in the heap, where RSS goes on counting them; both runs hand
    blocks over 1 MB back to the system (``MALLOC_MMAP_THRESHOLD_``), so that the peak is close to that
    of the live tensors (what a GPU's ``max_memory_allocated`` reads). The largest process is the main
    one, which also gathers the whole optimizer state for the checkpoints (onto the host)."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        log("fsdp: 2 processes need 2 GPUs and torch sees 1: measured on the CPU")
        device = torch.device("cpu")
    flags = ["--env", "TicTacToe-v0", "--total-episodes", str(scale.fsdp_episodes), "--episodes-per-update",
             str(scale.fsdp_episodes // 2), "--final-eval-episodes", "8", "--eval-every", "0", "--kl-coef", "0",
             "--update-tokens", "512",  # activations small beside the training state
             *scale.fsdp_model]
    figures, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, sharded in (("ddp", False), ("fsdp", True)):
            run_dir = os.path.join(tmp, name)
            cmd = launch_command(2, fsdp=sharded) + train_cmd(run_dir, device, 1, *flags)[3:]
            log(f"fsdp: {scale.fsdp_episodes} TicTacToe episodes, 2 processes, {name} ...")
            peak = child_peak_rss_mb(cmd, {"MALLOC_MMAP_THRESHOLD_": str(2**20)})
            with open(os.path.join(run_dir, "summary.json")) as f:
                wall = json.load(f)["perf/wall_s"]
            figures[f"fsdp_{name}_peak_rss_mb"], figures[f"fsdp_{name}_wall_s"] = peak, wall
            rows.append([name, peak, wall])
        policy, _ = load_policy(os.path.join(tmp, "fsdp", "checkpoints", "final"))
        params = param_count(policy)
    figures["fsdp_params"] = params
    figures["fsdp_over_ddp_peak_rss"] = figures["fsdp_fsdp_peak_rss_mb"] / figures["fsdp_ddp_peak_rss_mb"]
    table(f"9. FSDP vs DDP on {device.type} (2 processes x 1 thread; {params / 1e6:.1f}M parameters, "
          f"{params * 12 / 2**20:.0f} MB of fp32 gradients and Adam moments in all)",
          ["sharding", "peak RSS of the largest process, MB", "training wall s"], rows)
    return figures


def binary_policy(model: TinyConfig, device: torch.device):
    """``build(model)`` restricted to the tokens "0" and "1" (a KeyToDoor move, never invalid)."""
    policy, tokenizer = build(model, device)
    policy.allowed_tokens = torch.tensor([tokenizer.decode([i]) in ("0", "1") for i in range(len(tokenizer))],
                                         device=device)
    return policy, tokenizer


def restarted(played: list, k: int) -> list[Start]:
    """The starts of ``branches.turn_values``'s continuations, each with its whole transcript to
    prefill (no forked cache): K re-seeded copies of every turn's state."""
    rng = np.random.default_rng(0)
    return [Start(env, episode.tokens[:start]) for episode in played
            for start, state in zip(turn_starts(episode.action_mask), episode.states)
            for env in branches.clones(state, k, rng)]


def bench_branches(scale: Scale, device: torch.device) -> dict:
    figures, rows = {}, []
    make_env = lambda: gym.make("KeyToDoor-v0", delay=16, disable_env_checker=True)  # noqa: E731
    for size, episodes in scale.branch_episodes:
        policy, tokenizer = binary_policy(scale.model(size), device)
        rows_ = min(scale.multiturn_envs, episodes)

        def engine(snapshots: bool = False) -> RolloutEngine:
            return RolloutEngine(policy, tokenizer, make_env, rows_, 1, device, values=False, snapshots=snapshots)

        log(f"branches: {size}, {episodes} episodes, K={scale.branch_rollouts} ...")
        seeds, generator = list(range(episodes)), torch.Generator(device=device)
        engine(snapshots=True).collect(seeds[:2], generator.manual_seed(0))  # warm-up
        plain, t_plain = timed(lambda: engine().collect(seeds, generator.manual_seed(0)), device)
        played = engine(snapshots=True).collect(seeds, generator.manual_seed(0))
        (_, forked_tokens), t_fork = timed(lambda: branches.turn_values(
            engine(), played, scale.branch_rollouts, 1.0, generator.manual_seed(1), np.random.default_rng(0)), device)
        restarts = restarted(played, scale.branch_rollouts)
        again, t_again = timed(lambda: engine().collect(restarts, generator.manual_seed(1)), device)
        rates = {"rollout": sum(sum(e.action_mask) for e in plain) / t_plain, "forked": forked_tokens / t_fork,
                 "prefilled": sum(sum(e.action_mask) for e in again) / t_again}
        for name, rate in rates.items():
            figures[f"branches_{name}_tok_s_{size}"] = rate
            rows.append([size, name, rate, rate / rates["rollout"]])
        figures[f"branches_forked_over_rollout_{size}"] = rates["forked"] / rates["rollout"]
        figures[f"branches_forked_over_prefilled_{size}"] = rates["forked"] / rates["prefilled"]
    table(f"6. Monte-Carlo continuations vs rollouts (KeyToDoor delay 16, K={scale.branch_rollouts}, generated tokens/s)",
          ["model", "what", "tokens/s", "/ rollout"], rows)
    return figures


# ---- main --------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sections:\n" + "".join(f"  {k:<10} {v}\n" for k, v in SECTIONS.items())
                                + "\nThe JSON keys are listed in docs/benchmark.md.")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated sections to run (default: all)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the models run; auto: cuda when torch sees a GPU, else cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in well under a minute")
    p.add_argument("--out", default="", help="also write the JSON object to this file")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    scale = QUICK if args.quick else FULL
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generate's and TRL's advice on every call would bury the table
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    figures = {}
    runners = {"decode": lambda: bench_decode(scale, device), "multiturn": lambda: bench_multiturn(scale, device),
               "scaling": lambda: bench_scaling(scale, device), "trl": lambda: bench_trl(scale, device, args.threads),
               "update": lambda: bench_update(scale, device, args.threads),
               "branches": lambda: bench_branches(scale, device),
               "launch": lambda: bench_launch(scale, device, args.threads),
               "parallel": lambda: bench_parallel(scale, device), "fsdp": lambda: bench_fsdp(scale, device)}
    for section in args.sections:
        result, seconds = timed(runners[section], device)
        figures.update(result)
        log(f"{section}: done in {seconds:.0f} s")
    figures["bench_wall_s"] = time.perf_counter() - start
    print(f"\n{torch.get_num_threads()} threads on {device}; {figures['bench_wall_s']:.0f} s in all")
    line = json.dumps(figures)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line, flush=True)
    return figures


if __name__ == "__main__":
    main()
