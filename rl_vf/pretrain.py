"""Warm start: supervised training of a policy on the env's own demonstrations.

Each env with a demonstrator (``TextEnv.demo_action``: its solver, heuristic or engine, mixed
with random legal moves) plays ``demos`` episodes. The transcripts use exactly the token layout of
the rollout engine (BOS, observation, action, stop token, observation, ...), so the policy learns
the same conditional it will sample from in RL. The loss is the NLL of the action tokens alone: the
value function is left as initialised (DESIGN.md: a critic is fitted only to the returns of the
policy being trained, never to the demonstrator's), and no separate critic is saved, so RL with
``critic: separate`` starts its critic as a copy of the warm-started trunk.

``warm_start`` keeps each warm start that ``train`` computes in a cache and copies it into later runs
with the same settings (the arms of a comparison at one seed, a run started again): the same
settings, model and source give the same weights, so recomputing them only costs minutes.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import queue
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import transformers
from tqdm.auto import tqdm

from rl_vf.algos.losses import masked_mean
from rl_vf.config import WARM_START_FIELDS, ConfigError, TrainConfig, write_config
from rl_vf.engine import Episode, RolloutBatch, stop_token_mask
from rl_vf.legal import LegalActions
from rl_vf.actor import episode_metrics, evaluate, open_env, policy_for_env, resolve_device
from rl_vf.learner import adam, clip_gradients, minibatch_parts, scheduled_lr


def stop_token(tokenizer) -> int:
    """The token that ends an action early: a newline where the vocabulary has one, else EOS."""
    ids = tokenizer.encode("\n", add_special_tokens=False)
    return ids[0] if len(ids) == 1 and tokenizer.decode(ids) == "\n" else tokenizer.eos_token_id


def demo_episode(env, seed: int, rng: np.random.Generator, expert_prob: float, tokenizer,
                 max_action_tokens: int, legal: LegalActions | None = None) -> Episode:
    """One demonstration, laid out as the rollout engine lays out a sampled episode (with ``legal``, each
    action token keeps its allowed set, as under legal-action decoding)."""
    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False)

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    stop = stop_token(tokenizer)
    obs, _ = env.reset(seed=seed)
    ep = Episode(seed=seed)
    ep.extend(bos + encode(obs), is_action=False)
    while True:
        action = env.unwrapped.demo_action(rng, expert_prob)
        tokens = encode(action)
        if len(tokens) > max_action_tokens:
            raise ConfigError(f"the demonstrator's action {action!r} is {len(tokens)} tokens, more than "
                              f"max_action_tokens={max_action_tokens}; raise --max-action-tokens")
        if len(tokens) < max_action_tokens:
            tokens.append(stop)
        keys = legal.trie(env).keys_along(tokens) if legal else None
        ep.extend(tokens, is_action=True, legal_keys=keys)
        ep.actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        ep.record_step(reward, info, terminated or truncated)
        if terminated or truncated:
            return ep
        ep.extend(encode(obs), is_action=False)


def demo_episodes(make_env, cfg: TrainConfig, tokenizer, max_action_tokens: int,
                  legal: LegalActions | None) -> list[Episode]:
    """``cfg.warm_start_demos`` demonstrations played on ``cfg.env_threads`` threads, each on an env of
    its own. Demo ``i`` depends on ``(cfg.seed, i)`` alone (its env's reset seed and its own random
    stream), so the demos are the same whatever the thread count and order; threads pay off where a
    step waits on a subprocess (CodeFunction's sandbox: 2000 programs, 2 minutes one at a time)."""
    idle = queue.SimpleQueue()  # envs not in use; a thread takes one per episode

    def play(i: int) -> Episode:
        try:
            env = idle.get_nowait()
        except queue.Empty:
            env = make_env()
        try:
            return demo_episode(env, cfg.seed * 1_000_003 + i, np.random.default_rng([cfg.seed, i]),
                                cfg.warm_start_expert_prob, tokenizer, max_action_tokens, legal)
        finally:
            idle.put(env)

    try:
        with ThreadPoolExecutor(cfg.env_threads) as pool:
            return list(tqdm(pool.map(play, range(cfg.warm_start_demos)), total=cfg.warm_start_demos,
                             desc=f"demos {cfg.env}", unit="ep", mininterval=1.0))
    finally:
        while not idle.empty():
            idle.get_nowait().close()


def check_demonstrator(env, env_id: str) -> None:
    env.reset(seed=0)
    try:
        env.unwrapped.legal_actions()
        env.unwrapped.expert_action(np.random.default_rng(0))
    except (AttributeError, NotImplementedError) as e:
        import envs

        raise ConfigError(f"env {env_id!r} has no demonstrator ({e}); it needs expert_action() and legal_actions() "
                          f"(see envs/base.py); built-in envs: {', '.join(envs.ENV_IDS)}") from None


def cache_root() -> str:
    """The folder of rl_vf's caches: ``$RL_VF_CACHE``, else ``$XDG_CACHE_HOME/rl_vf`` (~/.cache/rl_vf)."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rl_vf")
    return os.environ.get("RL_VF_CACHE") or default


def source_files(env) -> list[str] | None:
    """The Python files a warm start's result depends on: rl_vf's, and those beside the env's module
    (None: an env defined where no file holds it, e.g. in a notebook)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env_file = getattr(sys.modules.get(type(env.unwrapped).__module__), "__file__", None)
    if env_file is None:
        return None
    env_dir = os.path.dirname(os.path.abspath(env_file))
    files = [os.path.join(d, f) for d, _, names in os.walk(here) for f in names if f.endswith(".py")]
    files += [os.path.join(env_dir, f) for f in os.listdir(env_dir) if f.endswith(".py")]
    return sorted(set(files))


def warm_start_key(cfg: TrainConfig, eval_episodes: int, env) -> str | None:
    """A hash of all a warm start depends on: the config keys it reads, the model folder's files (name,
    size, modification time), rl_vf's and the env's source, and the torch and transformers versions
    (None: the env's source is not in a file, so a cached copy could be stale)."""
    sources = source_files(env)
    if sources is None:
        return None
    digest = hashlib.sha256()
    settings = {name: getattr(cfg, name) for name in WARM_START_FIELDS}
    settings.update(eval_episodes=eval_episodes, torch=torch.__version__, transformers=transformers.__version__)
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in sources:
        with open(path, "rb") as f:
            digest.update(path.encode() + f.read())
    if os.path.isdir(cfg.model):
        for folder, _, names in sorted(os.walk(cfg.model)):
            for name in sorted(names):
                stat = os.stat(os.path.join(folder, name))
                digest.update(f"{os.path.relpath(os.path.join(folder, name), cfg.model)}:{stat.st_size}:"
                              f"{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def warm_start(cfg: TrainConfig, run_dir: str, eval_episodes: int) -> dict:
    """``pretrain`` into ``run_dir``, or, with ``cfg.warm_start_cache`` (and an env whose source is in a
    file), a copy of the same warm start from the cache (computed there first when it is not yet). A
    run that asks for a warm start another one is computing waits for it (a file lock) instead of
    computing it twice. The summary says ``cached`` and where from."""
    key = None
    if cfg.warm_start_cache:
        env = open_env(cfg.env, cfg.env_kwargs).make()
        key = warm_start_key(cfg, eval_episodes, env)
        env.close()
    if key is None:
        return pretrain(cfg, run_dir, eval_episodes)
    folder = os.path.join(cache_root(), "warm_starts")
    cached = os.path.join(folder, key)
    os.makedirs(folder, exist_ok=True)
    with open(cached + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        computed = not os.path.isfile(os.path.join(cached, "summary.json"))
        if computed:
            partial = tempfile.mkdtemp(prefix=key + ".", dir=folder)  # renamed once complete
            try:
                pretrain(cfg, partial, eval_episodes)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            shutil.rmtree(cached, ignore_errors=True)
            os.rename(partial, cached)
        shutil.copytree(cached, run_dir, dirs_exist_ok=True)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    summary.update(checkpoint=os.path.join(run_dir, "checkpoints", "final"), cached=not computed, cache=cached)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def pretrain(cfg: TrainConfig, run_dir: str, eval_episodes: int) -> dict:
    """Generate ``cfg.warm_start_demos`` demonstrations, fit the policy to them (``warm_start_epochs``
    at ``warm_start_lr``), save checkpoints/final and evaluate it on ``eval_episodes``; returns the
    summary."""
    demos, expert_prob = cfg.warm_start_demos, cfg.warm_start_expert_prob
    if demos < 1:
        raise ConfigError(f"the number of demonstrations (--demos, warm_start_demos) must be >= 1, got {demos}")
    start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    env_info = open_env(cfg.env, cfg.env_kwargs)
    policy, tokenizer = policy_for_env(cfg.model, cfg, env_info)
    policy.critic = None  # see the module docstring
    policy = policy.to(device)
    max_action_tokens = cfg.max_action_tokens or env_info.action_tokens
    env = env_info.make()
    check_demonstrator(env, cfg.env)
    env.close()
    os.makedirs(run_dir, exist_ok=True)
    write_config(cfg, run_dir)

    legal = None
    if cfg.constrain_actions == "legal":
        legal = LegalActions(lambda text: tokenizer.encode(text, add_special_tokens=False), stop_token_mask(tokenizer))
    episodes = demo_episodes(env_info.make, cfg, tokenizer, max_action_tokens, legal)
    batch = RolloutBatch.from_episodes(episodes, tokenizer.pad_token_id).to(device)
    lengths = batch.attention_mask.sum(1)

    optimizer = adam(policy, cfg.warm_start_lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = -(-demos // cfg.minibatch_size)
    steps = cfg.warm_start_epochs * steps_per_epoch
    bar = tqdm(total=steps, desc="pretrain", unit="step", mininterval=1.0)
    history = []
    policy.train()
    for epoch in range(cfg.warm_start_epochs):
        totals = {"pretrain/nll": 0.0}
        for i, idx in enumerate(torch.randperm(demos, generator=generator).split(cfg.minibatch_size)):
            optimizer.zero_grad(set_to_none=True)
            for sl, weight in minibatch_parts(lengths, batch.action_mask, idx.to(device), cfg.update_tokens):
                mask = batch.action_mask[sl]
                out = policy.score(batch.tokens[sl], batch.attention_mask[sl], legal=batch.legal(sl), scored=mask)
                nll = -masked_mean(out["logprobs"], mask)
                (nll * weight).backward()
                totals["pretrain/nll"] += float(nll.detach() * weight) / steps_per_epoch
            clip_gradients(policy, cfg.max_grad_norm)
            scheduled_lr(optimizer, cfg.warm_start_lr_schedule, epoch * steps_per_epoch + i, steps)
            optimizer.step()
            bar.update()
        bar.set_postfix(nll=f"{totals['pretrain/nll']:.3f}", refresh=False)
        history.append({"epoch": epoch + 1, **totals})
    bar.close()

    final = os.path.join(run_dir, "checkpoints", "final")
    policy.save_pretrained(final, tokenizer)
    eval_env = open_env(cfg.env, cfg.eval_kwargs)
    metrics, _ = evaluate(policy, tokenizer, eval_env.make, cfg, eval_episodes, cfg.seed, cfg.eval_greedy,
                          max_action_tokens, device)
    summary = {
        "env": cfg.env, "seed": cfg.seed, "demos": demos, "expert_prob": expert_prob,
        **episode_metrics(episodes, "demo"), **history[-1], "eval/episodes": eval_episodes, "eval/greedy": cfg.eval_greedy, **metrics,
        "checkpoint": final, "perf/wall_s": time.perf_counter() - start,
    }
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in history)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
