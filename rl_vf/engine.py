"""Batched multi-turn rollouts with a KV cache kept across turns.

All rows advance in lock step: prefill each row's pending tokens (the previous action's last
token, if not yet cached, plus the new observation), then decode one action per row until every
row has emitted a stop token (newline or EOS) or ``max_action_tokens``; then step the envs.

Rows share one cache time axis; each row has its own position ids and a 2-D attention mask
over the cache columns, so rows of different lengths never see each other's padding. A finished
row is refilled with a new episode by masking out its old columns and restarting its positions
at 0; columns dead in every row are compacted away, so the cache stays about one episode long.
The token-level contract (masks, reward placement) is in DESIGN.md.

With ``legal_only`` each action is sampled from the env's legal actions alone (rl_vf/legal.py).

An episode starts from a reset seed, or mid-way from a ``Start`` (an env already in some state and
the transcript that led there, prefilled again) or a ``Fork`` (the same, with the transcript's KV
cache already computed: its columns are copied in, nothing is prefilled twice). Branches
(``rl_vf.branches``) use them for Monte-Carlo continuations; with ``snapshots`` the engine keeps a
copy of each episode's env at the start of every turn to branch from.
"""
from __future__ import annotations

import copy
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import gymnasium as gym
import torch
from gymnasium.utils import seeding
from gymnasium.wrappers import TimeLimit
from transformers.cache_utils import DynamicLayer

from rl_vf.advantages import turn_starts
from rl_vf.legal import Key, LegalActions, LegalDecode, pack_keys
from rl_vf.policy import Policy, PolicyCache


def success_flag(info: dict) -> bool | None:
    """An episode's success from its final step's info: ``success`` (rl_vf's envs), or Stable-Baselines3's
    ``is_success``; None where the env reports neither."""
    flag = info.get("success", info.get("is_success"))
    return None if flag is None else bool(flag)


@dataclass
class Episode:
    """One finished episode's transcript; per-token lists are aligned with ``tokens``."""

    seed: int | None  # None: started from a ``Start``, not a reset
    tokens: list[int] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # sampling-time, for checks only
    values: list[float] = field(default_factory=list)  # sampling-time, for checks only
    actions: list[str] = field(default_factory=list)
    ret: float = 0.0
    success: bool | None = None  # None: the env defines no success (no "success" / "is_success" in its info)
    invalid: bool = False
    truncated: bool = False  # transcript then ends with the final observation (for the bootstrap)
    # info["value"] (the env's exact value, where it has one) of every state the episode passed
    # through: the first state, then the state after each step; NaN where the env reports none.
    true_values: list[float] = field(default_factory=list)
    # (position, allowed token ids) of each action token sampled under legal-action decoding.
    legal: list[tuple[int, Key]] = field(default_factory=list)
    # With ``RolloutEngine(snapshots=True)``: a copy of the (unwrapped) env at the start of every turn.
    states: list[gym.Env] = field(default_factory=list)

    def record_step(self, reward: float, info: dict, done: bool) -> None:
        """An env step's outcome: its reward sits on the last action token (DESIGN.md)."""
        self.rewards[-1] += float(reward)
        self.ret += float(reward)
        self.invalid |= bool(info.get("invalid_action", False))
        if done:
            self.success = success_flag(info)

    def extend(self, tokens, is_action: bool, logprobs=None, values=None, legal_keys=None):
        n = len(tokens)
        if legal_keys is not None:
            self.legal.extend((len(self.tokens) + i, key) for i, key in enumerate(legal_keys))
        self.tokens.extend(tokens)
        self.action_mask.extend([int(is_action)] * n)
        self.rewards.extend([0.0] * n)
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * n)
        self.values.extend(values if values is not None else [0.0] * n)


def true_value(info: dict) -> float:
    """The env's exact value of the state it just reached (envs/base.py), NaN if it has none."""
    return float(info.get("value", math.nan))


def true_deltas(episodes: list[Episode], width: int) -> torch.Tensor | None:
    """(N, ``width``): each turn's TD error under the env's exact values at the turn's first action
    token, NaN elsewhere; None where no episode has a value."""
    if not any(math.isfinite(v) for e in episodes for v in e.true_values):
        return None
    out = torch.full((len(episodes), width), math.nan)
    for row, e in enumerate(episodes):
        starts = turn_starts(e.action_mask)
        for k, (start, end) in enumerate(zip(starts, [*starts[1:], len(e.tokens)])):
            if k + 1 < len(e.true_values):
                out[row, start] = sum(e.rewards[start:end]) + e.true_values[k + 1] - e.true_values[k]
    return out


@dataclass
class Start:
    """An episode that begins mid-way: ``env`` is already in the state to play from (e.g. a clone of
    a replayed env) and ``tokens`` is the transcript that led there (BOS, observations and actions,
    ending with the current observation). In the returned Episode these tokens are its prompt
    (action_mask 0) and ``ret`` counts only the rewards from this state on. The caller owns ``env``."""

    env: gym.Env
    tokens: list[int]


@dataclass
class Fork:
    """A ``Start`` whose transcript's KV cache is already computed (``rl_vf.branches.prefix_cache``):
    ``kv`` holds, per layer of the policy LM, the keys and values (heads, n - 1, dim) of all but the
    last of ``tokens``; that last token is fed with the first decode step. Only for an engine without
    values (no separate critic's cache to fork). The caller owns ``env``; ``kv`` is only read."""

    env: gym.Env
    tokens: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]


def copy_env(env: gym.Env, seed: int | None = None) -> gym.Env:
    """An independent copy of ``env``'s unwrapped env in its current state: its ``clone(seed)``
    (``envs.base.TextEnv``), else a deep copy. With ``seed`` the copy's own randomness (an opponent)
    is re-seeded, so continuations from one state differ. A ``TimeLimit`` around ``env`` (a limit the
    agent cannot see) comes along with the steps it has left, so a continuation is truncated where
    the episode would have been; other wrappers do not."""
    inner = env.unwrapped
    if callable(getattr(inner, "clone", None)):
        twin = inner.clone(seed=seed)
    else:
        twin = copy.deepcopy(inner)
        if seed is not None:
            twin._np_random, twin._np_random_seed = seeding.np_random(seed)
    while isinstance(env, gym.Wrapper) and not isinstance(env, TimeLimit):
        env = env.env
    if not isinstance(env, TimeLimit):
        return twin
    limited = TimeLimit(twin, env._max_episode_steps)
    limited._elapsed_steps = env._elapsed_steps or 0
    return limited


@dataclass
class RolloutBatch:
    """Dense (N, T) tensors over N episodes, right-padded; per-episode tensors are (N,)."""

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    rewards: torch.Tensor
    returns: torch.Tensor
    success: torch.Tensor
    invalid: torch.Tensor
    truncated: torch.Tensor
    group_ids: torch.Tensor
    sample_logprobs: torch.Tensor
    sample_values: torch.Tensor
    # Legal-action decoding (rl_vf/legal.py pack_keys): which allowed set each token was sampled
    # from, and the sets' token ids; both None when no token was constrained.
    legal_index: torch.Tensor | None = None
    legal_ids: torch.Tensor | None = None
    # Where the env reports exact values (info["value"]): at each turn's first action token, that
    # action's TD error under them, r + V*(s') - V*(s); NaN elsewhere. None: no values.
    true_deltas: torch.Tensor | None = None

    @classmethod
    def from_episodes(cls, episodes: list[Episode], pad_id: int, group_size: int = 1) -> "RolloutBatch":
        T = max(len(e.tokens) for e in episodes)

        def pad(key, value, dtype):
            return torch.tensor([getattr(e, key) + [value] * (T - len(e.tokens)) for e in episodes], dtype=dtype)

        return cls(
            tokens=pad("tokens", pad_id, torch.long),
            attention_mask=torch.tensor([[1] * len(e.tokens) + [0] * (T - len(e.tokens)) for e in episodes]),
            action_mask=pad("action_mask", 0, torch.long),
            rewards=pad("rewards", 0.0, torch.float32),
            returns=torch.tensor([e.ret for e in episodes], dtype=torch.float32),
            success=torch.tensor([bool(e.success) for e in episodes]),
            invalid=torch.tensor([e.invalid for e in episodes]),
            truncated=torch.tensor([e.truncated for e in episodes]),
            group_ids=torch.arange(len(episodes)) // group_size,
            sample_logprobs=pad("logprobs", 0.0, torch.float32),
            sample_values=pad("values", 0.0, torch.float32),
            **dict(zip(("legal_index", "legal_ids"), pack_keys([e.legal for e in episodes], T) or ())),
            true_deltas=true_deltas(episodes, T),
        )

    def to(self, device) -> "RolloutBatch":
        return RolloutBatch(**{k: v.to(device) if v is not None else None for k, v in vars(self).items()})

    def legal(self, sl) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``legal`` argument of ``Policy.score`` for the rows/columns ``sl`` (None: unconstrained)."""
        return None if self.legal_index is None else (self.legal_index[sl], self.legal_ids)

    def __len__(self) -> int:
        return self.tokens.shape[0]


def stop_token_mask(tokenizer) -> torch.Tensor:
    """(V,) bool: tokens that end an action (EOS, or any token whose text holds a newline)."""
    stop = torch.zeros(len(tokenizer), dtype=torch.bool)
    for i in range(len(tokenizer)):
        if "\n" in tokenizer.decode([i]):
            stop[i] = True
    if tokenizer.eos_token_id is not None:
        stop[tokenizer.eos_token_id] = True
    return stop


def action_token_mask(tokenizer, charset: str) -> torch.Tensor:
    """(V,) bool: stop tokens and tokens whose text uses only ``charset`` (an action space's chars).

    Restricting sampling to these keeps a from-scratch policy from wasting its exploration on
    tokens that can never form a legal action (padding, BOS, observation-only symbols).
    """
    allowed = set(charset)
    mask = stop_token_mask(tokenizer)
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i], skip_special_tokens=True)
        if text and set(text) <= allowed:
            mask[i] = True
    return mask


class RolloutEngine:
    def __init__(
        self,
        policy: Policy,
        tokenizer,
        make_env: Callable[[], gym.Env],
        num_envs: int,
        max_action_tokens: int,
        device: torch.device | str | None = None,
        sync_every: int | None = None,
        env_threads: int = 1,
        legal_only: bool = False,
        values: bool = True,
        static_decode: bool | None = None,
        snapshots: bool = False,
    ):
        self.policy = policy
        self.tokenizer = tokenizer
        self.envs = [make_env() for _ in range(num_envs)]
        self.max_action_tokens = max_action_tokens
        self.device = torch.device(device) if device is not None else next(policy.parameters()).device
        # Checking "has every row stopped?" reads a device tensor on the host. That stalls a GPU's
        # queue of kernels, so there it is done every 8 tokens (rows that stopped decode padding in
        # between); on the CPU it costs nothing, so every token.
        self.sync_every = sync_every or (1 if self.device.type == "cpu" else 8)
        # Decode tokens with a fixed-shape step (_StaticDecode), replayed as a CUDA graph on a GPU;
        # default: on CUDA only (on the CPU it runs eagerly, for tests, and attends over spare columns),
        # and only while the weights stay where a graph was captured reading them.
        if static_decode is None:
            static_decode = self.device.type == "cuda" and policy.weights_stay_put
        self.static_decode = static_decode
        self._static: dict[tuple, _StaticDecode] = {}
        self.stop = stop_token_mask(tokenizer).to(self.device)
        self.pad_id = tokenizer.pad_token_id
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        # Observations repeat a lot (board positions): tokenise each distinct text once.
        self.encode = lru_cache(maxsize=1 << 16)(lambda text: tuple(tokenizer.encode(text, add_special_tokens=False)))
        # Actions repeat as well (moves, answers): decode each distinct token sequence once; the text
        # is read up to the first newline.
        self.action_text = lru_cache(maxsize=1 << 16)(
            lambda tokens: tokenizer.decode(list(tokens), skip_special_tokens=True).split("\n", 1)[0])
        self.tokens_generated = 0
        # Envs whose step waits on a subprocess (CodeFunction's sandbox) step side by side in threads;
        # a pure-Python env gains nothing from threads (the GIL), so 1 steps them in turn.
        self.pool = ThreadPoolExecutor(env_threads) if env_threads > 1 else None
        # Without values a separate critic is not run (Policy.new_cache); episodes' values are then 0.
        self.values = values
        self.legal = LegalActions(lambda text: list(self.encode(text)), self.stop) if legal_only else None
        self.snapshots = snapshots  # keep Episode.states (copies of the env at every turn's start)

    def close(self) -> None:
        for env in self.envs:
            env.close()
        if self.pool is not None:
            self.pool.shutdown()

    def _step(self, envs: list[gym.Env], texts: list[str]) -> list[tuple]:
        """``env.step(text)`` for each pair, in order."""
        if self.pool is None:
            return [env.step(text) for env, text in zip(envs, texts)]
        return list(self.pool.map(lambda env, text: env.step(text), envs, texts))

    @torch.no_grad()
    def collect(self, starts: Sequence[int | Start | Fork], generator: torch.Generator,
                greedy: bool = False, on_done: Callable[[Episode], None] | None = None) -> list[Episode]:
        """Play ``len(starts)`` episodes; returns them in order. Episode i resets one of the engine's
        envs with seed ``starts[i]``, or, for a ``Start`` or ``Fork``, plays on from its env and tokens.
        ``on_done`` is called with each episode as it ends (progress bars)."""
        n = len(starts)
        episodes: list[Episode | None] = [None] * n
        own = self.envs[: min(len(self.envs), n)]  # each row's own env, for episodes that start from a seed
        envs = list(own)  # the env each row is playing
        row_episode = list(range(len(envs)))  # which episode each row is playing
        pending = []  # each row's tokens not yet cached
        for b in row_episode:
            envs[b], tokens = self._start(episodes, b, starts[b], own[b])
            pending.append(tokens)
        next_episode = len(envs)
        kv = _RowCache(self.policy, len(envs), self.device, self.max_action_tokens, self.values)
        kv.insert({b: starts[b].kv for b in row_episode if isinstance(starts[b], Fork)})

        while row_episode:
            # Prefill every row's pending tokens as one right-padded chunk.
            width = max(map(len, pending))
            ids = torch.tensor([p + [self.pad_id] * (width - len(p)) for p in pending], device=self.device)
            lens = torch.tensor([len(p) for p in pending], device=self.device)
            real = torch.arange(width, device=self.device)[None, :] < lens[:, None]
            logits, values = kv.forward(ids, real)
            tries = [self.legal.trie(env) for env in envs] if self.legal else None
            action = self._decode(kv, logits, values, generator, greedy, tries)

            # Step the envs; refill finished rows, or drop them once every episode has started.
            texts = [self.action_text(tuple(tokens)) for tokens, *_ in action]
            if self.snapshots:
                for b, env in enumerate(envs):
                    episodes[row_episode[b]].states.append(copy_env(env))
            results = self._step(envs, texts)
            keep, fresh = [], []
            for b, (obs, reward, terminated, truncated, info) in enumerate(results):
                tokens, logprobs, values_b, keys, unfed = action[b]
                ep = episodes[row_episode[b]]
                ep.extend(tokens, is_action=True, logprobs=logprobs, values=values_b, legal_keys=keys)
                ep.actions.append(texts[b])
                ep.record_step(reward, info, terminated or truncated)
                ep.true_values.append(true_value(info))
                if not (terminated or truncated):
                    obs_tokens = list(self.encode(obs))
                    ep.extend(obs_tokens, is_action=False)
                    pending[b] = tokens[-1:] * unfed + obs_tokens
                    keep.append(b)
                    continue
                if truncated and not terminated:
                    ep.truncated = True
                    ep.extend(list(self.encode(obs)), is_action=False)
                if on_done is not None:
                    on_done(ep)
                if next_episode < n:
                    envs[b], pending[b] = self._start(episodes, next_episode, starts[next_episode], own[b])
                    row_episode[b] = next_episode
                    next_episode += 1
                    keep.append(b)
                    fresh.append(b)
            kv.restart(fresh)
            kv.insert({b: starts[row_episode[b]].kv for b in fresh if isinstance(starts[row_episode[b]], Fork)})
            if len(keep) < len(envs):
                envs, own = [envs[b] for b in keep], [own[b] for b in keep]
                row_episode = [row_episode[b] for b in keep]
                pending = [pending[b] for b in keep]
                kv.select(keep)
        return episodes

    def _start(self, episodes: list, i: int, start: int | Start | Fork, own: gym.Env) -> tuple[gym.Env, list[int]]:
        """Begin episode i: reset ``own`` with a seed, or take a Start's or Fork's env. Returns the env to
        play and the episode's tokens to prefill (BOS + observation, the Start's transcript, or the last
        token of the Fork's, whose other tokens ``_RowCache.insert`` puts in the cache)."""
        if isinstance(start, (Start, Fork)):
            env, tokens, seed, value = start.env, list(start.tokens), None, math.nan
        else:
            env, seed = own, start
            obs, info = env.reset(seed=seed)
            tokens, value = self.bos + list(self.encode(obs)), true_value(info)
        episodes[i] = Episode(seed=seed, true_values=[value])
        episodes[i].extend(tokens, is_action=False)
        return env, tokens[-1:] if isinstance(start, Fork) else tokens

    def _decode(self, kv: "_RowCache", logits, values, generator, greedy, tries=None) -> list[tuple]:
        """Sample one action per row until a stop token or the budget; with ``tries`` (one per row,
        legal-action decoding) only tokens that keep the row's action legal.

        Returns per row ``(tokens, logprobs, values, keys, unfed)``: ``keys`` are the allowed sets of
        the tokens (None when unconstrained); ``unfed`` is 1 when the last token is not in the cache
        yet (it is then prefilled with the next observation).
        """
        live = torch.ones(len(logits), dtype=torch.bool, device=self.device)
        static = self._static_for(kv) if self.static_decode and self.max_action_tokens > 1 else None
        step_forward = static.step if static is not None else kv.step
        steps_tok, steps_lp, steps_v, steps_live = [], [], [], []
        legal = LegalDecode(tries, self.stop) if tries else None
        for step in range(self.max_action_tokens):
            if legal is not None:
                logits = logits.masked_fill(~legal.allowed(step), float("-inf"))
            logp = torch.log_softmax(logits, dim=-1)
            if greedy:
                tok = logp.argmax(-1)
            else:
                tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            tok = torch.where(live, tok, self.pad_id)
            steps_tok.append(tok)
            steps_lp.append(logp.gather(1, tok[:, None]).squeeze(1))
            steps_v.append(values)
            steps_live.append(live)
            still = live & ~self.stop[tok]
            if legal is not None:
                legal.advance(step, tok)
            if step == self.max_action_tokens - 1:
                break
            if (step + 1) % self.sync_every == 0 and not bool(still.any()):
                break
            logits, values = step_forward(tok, live)
            live = still
        if static is not None:
            static.finish(kv)
        gen = torch.stack(steps_tok, 1).tolist()
        gen_lp = torch.stack(steps_lp, 1).tolist()
        gen_v = torch.stack(steps_v, 1).tolist()
        gen_n = torch.stack(steps_live, 1).sum(1).tolist()
        self.tokens_generated += sum(gen_n)
        # The allowed set of each sampled token, for the loss: the tries say it on the host, once per action.
        keys = [tries[b].keys_along(gen[b][:k]) if tries else None for b, k in enumerate(gen_n)]
        return [(gen[b][:k], gen_lp[b][:k], gen_v[b][:k], keys[b], int(u))
                for b, (k, u) in enumerate(zip(gen_n, live.tolist()))]

    def _static_for(self, kv: "_RowCache") -> "_StaticDecode":
        """The static decode step for ``kv``'s rows and buffers (made once per rows and buffers; a GPU
        captures it as a CUDA graph), set to continue from ``kv``'s state."""
        buffers = kv.reserve(self.max_action_tokens)
        key = (len(kv.pos), *((b.data_ptr(), *b.shape) for b in buffers))
        if key not in self._static:
            if len(self._static) >= 8:  # old buffers are gone once the cache moved: drop their graphs
                self._static.clear()
            self._static[key] = _StaticDecode(self.policy, kv, buffers, graph=self.device.type == "cuda")
        static = self._static[key]
        static.start(kv)
        return static


class _RowCache:
    """One KV cache shared by rows that each keep their own positions and attention columns (with a
    separate critic: the policy's and the critic's caches, kept in step). ``action_tokens``: the decode
    budget after each prefill, which the cache keeps room for."""

    def __init__(self, policy: Policy, rows: int, device: torch.device, action_tokens: int, values: bool = True):
        self.policy = policy
        self.cache = policy.new_cache(values, headroom=action_tokens)
        self.attn = torch.zeros(rows, 0, dtype=torch.bool, device=device)  # which cache columns each row sees
        self.pos = torch.zeros(rows, dtype=torch.long, device=device)  # next position id of each row

    def forward(self, ids: torch.Tensor, real: torch.Tensor):
        """Append ``ids`` (R, W); ``real`` marks each row's tokens (left-aligned), the rest is padding.
        Returns the (R, V) logits and (R,) values after each row's last token (the head runs there alone)."""
        self.attn = torch.cat([self.attn, real], dim=1)
        positions = self.pos[:, None] + torch.arange(ids.shape[1], device=ids.device)
        counts = real.sum(1)
        last = (counts - 1).clamp(min=0)[:, None] if ids.shape[1] > 1 else None
        logits, values, self.cache = self.policy(
            ids, attention_mask=self.attn, position_ids=positions, past_key_values=self.cache, use_cache=True,
            queries=last,
        )
        self.pos = self.pos + counts
        return logits[:, 0], values[:, 0]

    def step(self, tok: torch.Tensor, live: torch.Tensor):
        """One decode token per row (``live`` False: padding); returns (R, V) logits and (R,) values."""
        return self.forward(tok[:, None], live[:, None])

    def reserve(self, tokens: int) -> list[torch.Tensor]:
        """Room in every layer for ``tokens`` more columns; returns the key and value buffers."""
        end = self.attn.shape[1] + tokens
        return [buffer for layer in self.cache.layers for buffer in layer.reserve(end)]

    def insert(self, kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Append cached columns: row b gets the keys and values ``kv[b]`` (one (heads, n_b, dim) pair per
        layer of the policy LM) as its next n_b columns and positions; other rows see none of them."""
        if not kv:
            return
        if self.cache.critic is not None:
            raise ValueError("a Fork carries the policy LM's cache only: collect forks with values=False")
        rows, width = len(self.pos), max(pairs[0][0].shape[1] for pairs in kv.values())
        real = torch.zeros(rows, width, dtype=torch.bool, device=self.pos.device)
        for b, pairs in kv.items():
            real[b, : pairs[0][0].shape[1]] = True
        self.attn = torch.cat([self.attn, real], dim=1)
        self.pos = self.pos + real.sum(1)
        for i, (like, _) in enumerate(next(iter(kv.values()))):
            keys = like.new_zeros(rows, like.shape[0], width, like.shape[2])
            values = torch.zeros_like(keys)
            for b, pairs in kv.items():
                n = pairs[i][0].shape[1]
                keys[b, :, :n], values[b, :, :n] = pairs[i]
            self.cache.lm.update(keys, values, i)

    def restart(self, rows: list[int]) -> None:
        """Rows that begin a new episode forget their old columns and restart at position 0."""
        if rows:
            self.attn[rows] = False
            self.pos[rows] = 0
            self.attn, self.cache = _compact(self.attn, self.cache)

    def select(self, rows: list[int]) -> None:
        idx = torch.tensor(rows, dtype=torch.long, device=self.attn.device)
        self.attn, self.pos = self.attn[idx], self.pos[idx]
        if rows:
            self.cache.batch_select_indices(idx)


class _ColumnLayer(DynamicLayer):
    """A cache layer over full-capacity buffers that writes each new key and value at the column
    held in ``column`` (a device tensor) and returns the whole buffers: shapes never change."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, column: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.column, self.is_initialized = keys, values, column, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys.index_copy_(2, self.column, key_states)
        self.values.index_copy_(2, self.column, value_states)
        return self.keys, self.values


class _StaticDecode:
    """The engine's one-token decode step on tensors of fixed shape and address, so that a GPU can
    capture it once as a CUDA graph and replay it for every token (one launch instead of one per
    kernel: the tiny model's decode is bound by launches, not arithmetic).

    While rows decode, every row appends one cache column per token, at the same column. Here the
    KV buffers keep their full capacity C (``GrowingLayer.reserve``), the next column's index lives on
    the device, and the attention mask spans all C columns (unwritten ones hidden). ``start`` loads a
    ``_RowCache``'s state, ``step`` decodes a token, ``finish`` hands the state back. The graph reads
    the policy's parameters in place, so it stays valid across optimizer steps.
    """

    def __init__(self, policy: Policy, kv: "_RowCache", buffers: list[torch.Tensor], graph: bool):
        self.policy = policy
        rows, capacity, device = len(kv.pos), buffers[0].shape[2], kv.pos.device
        self.column = torch.zeros(1, dtype=torch.long, device=device)  # the next column, for the graph
        self.mask = torch.zeros(rows, capacity, dtype=torch.bool, device=device)
        self.pos = torch.zeros(rows, dtype=torch.long, device=device)
        self.tok = torch.zeros(rows, dtype=torch.long, device=device)
        self.live = torch.zeros(rows, dtype=torch.bool, device=device)
        self.cache = kv.policy.new_cache(values=kv.cache.with_critic)
        layers = [_ColumnLayer(k, v, self.column) for k, v in zip(buffers[::2], buffers[1::2])]
        self.cache.lm.layers = layers[: len(kv.cache.lm.layers)]
        if self.cache.critic is not None:
            self.cache.critic.layers = layers[len(kv.cache.lm.layers):]
        self.graph = torch.cuda.CUDAGraph() if graph else None
        self.captured = False

    def start(self, kv: "_RowCache") -> None:
        self.width = kv.attn.shape[1]  # the columns written, known on the host (no sync to read column)
        self.mask.zero_()
        self.mask[:, : self.width] = kv.attn
        self.pos.copy_(kv.pos)
        self.column.fill_(self.width)

    def _run(self):
        self.mask.index_copy_(1, self.column, self.live[:, None])
        allowed = self.policy.visible(self.mask, self.column)
        logits, values, _ = self.policy(self.tok[:, None], attention_mask=allowed, position_ids=self.pos[:, None],
                                        past_key_values=self.cache, use_cache=True)
        self.pos += self.live
        self.column += 1
        return logits[:, 0], values[:, 0]

    def step(self, tok: torch.Tensor, live: torch.Tensor):
        """As ``_RowCache.step``; the values returned are overwritten by the next step (copy to keep)."""
        self.tok.copy_(tok)
        self.live.copy_(live)
        self.width += 1
        if self.graph is None:
            return self._run()
        if not self.captured:
            self._capture()
        self.graph.replay()
        logits, values = self.out
        return logits, values.clone()  # the caller keeps each step's values

    def _capture(self) -> None:
        # Warm up on a side stream (lazy initialisation must not happen inside the capture), then
        # undo the warm-up's writes to the state (the cache columns it wrote are rewritten later).
        saved = self.mask.clone(), self.pos.clone(), self.column.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._run()
        torch.cuda.current_stream().wait_stream(stream)
        for buffer, value in zip((self.mask, self.pos, self.column), saved):
            buffer.copy_(value)
        with torch.cuda.graph(self.graph):
            self.out = self._run()
        self.captured = True

    def finish(self, kv: "_RowCache") -> None:
        width = self.width
        kv.attn, kv.pos = self.mask[:, :width].clone(), self.pos.clone()
        for layer in kv.cache.layers:
            layer.keys, layer.values = layer.buffers[0][:, :, :width], layer.buffers[1][:, :, :width]


def _compact(attn: torch.Tensor, cache: PolicyCache) -> tuple[torch.Tensor, PolicyCache]:
    """Drop cache columns that no row attends to any more, once they are half the cache.

    Each row's live columns move left in order (a stable sort on "dead"), so positions, keys and
    the causal order are unchanged; the freed tail is cut.
    """
    width = attn.shape[1]
    keep = int(attn.sum(1).max())
    if width < 64 or keep > width // 2:
        return attn, cache
    order = torch.argsort((~attn).to(torch.int8), dim=1, stable=True)[:, :keep]
    for layer in cache.layers:
        layer.keep_columns(order)
    return attn.gather(1, order), cache
