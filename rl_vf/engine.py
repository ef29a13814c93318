"""Batched multi-turn rollouts with a KV cache kept across turns.

All rows advance in lock step: prefill each row's pending tokens (the previous action's last
token, if not yet cached, plus the new observation), then decode one action per row until every
row has emitted a stop token (newline or EOS) or ``max_action_tokens``; then step the envs.

Rows share one cache time axis; each row has its own position ids and a 2-D attention mask
over the cache columns, so rows of different lengths never see each other's padding. A finished
row is refilled with a new episode by masking out its old columns and restarting its positions
at 0; columns dead in every row are compacted away, so the cache stays about one episode long.
The token-level contract (masks, reward placement) is in DESIGN.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import gymnasium as gym
import torch
from transformers import DynamicCache

from rl_vf.policy import Policy


@dataclass
class Episode:
    """One finished episode's transcript; per-token lists are aligned with ``tokens``."""

    seed: int
    tokens: list[int] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # sampling-time, for checks only
    values: list[float] = field(default_factory=list)  # sampling-time, for checks only
    actions: list[str] = field(default_factory=list)
    ret: float = 0.0
    success: bool = False
    invalid: bool = False
    truncated: bool = False  # transcript then ends with the final observation (for the bootstrap)

    def extend(self, tokens, is_action: bool, logprobs=None, values=None):
        n = len(tokens)
        self.tokens.extend(tokens)
        self.action_mask.extend([int(is_action)] * n)
        self.rewards.extend([0.0] * n)
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * n)
        self.values.extend(values if values is not None else [0.0] * n)


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
            success=torch.tensor([e.success for e in episodes]),
            invalid=torch.tensor([e.invalid for e in episodes]),
            truncated=torch.tensor([e.truncated for e in episodes]),
            group_ids=torch.arange(len(episodes)) // group_size,
            sample_logprobs=pad("logprobs", 0.0, torch.float32),
            sample_values=pad("values", 0.0, torch.float32),
        )

    def to(self, device) -> "RolloutBatch":
        return RolloutBatch(**{k: v.to(device) for k, v in vars(self).items()})

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
        device: torch.device | str = "cpu",
    ):
        self.policy = policy
        self.tokenizer = tokenizer
        self.envs = [make_env() for _ in range(num_envs)]
        self.max_action_tokens = max_action_tokens
        self.device = torch.device(device)
        self.stop = stop_token_mask(tokenizer).to(self.device)
        self.pad_id = tokenizer.pad_token_id
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        # Observations repeat a lot (board positions): tokenise each distinct text once.
        self.encode = lru_cache(maxsize=1 << 16)(lambda text: tuple(tokenizer.encode(text, add_special_tokens=False)))
        self.tokens_generated = 0

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def _decode_action(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return text.split("\n", 1)[0]

    @torch.no_grad()
    def collect(self, seeds: list[int], generator: torch.Generator, greedy: bool = False) -> list[Episode]:
        """Play ``len(seeds)`` episodes (episode i resets with ``seeds[i]``); returns them in order."""
        n = len(seeds)
        episodes: list[Episode | None] = [None] * n
        B = min(len(self.envs), n)
        envs = self.envs[:B]
        row_episode = list(range(B))  # which episode each row is playing
        next_episode = B
        pending: list[list[int]] = []
        for b, env in enumerate(envs):
            obs, _ = env.reset(seed=seeds[b])
            episodes[b] = Episode(seed=seeds[b])
            pending.append(self.bos + list(self.encode(obs)))
            episodes[b].extend(pending[b], is_action=False)

        dev = self.device
        cache = DynamicCache()
        attn = torch.zeros(B, 0, dtype=torch.bool, device=dev)
        pos = torch.zeros(B, dtype=torch.long, device=dev)
        fresh = torch.zeros(B, dtype=torch.bool)  # rows that start a new episode this turn

        while row_episode:
            # Prefill: every row has pending tokens (right-padded chunk).
            if fresh.any():
                fresh_d = fresh.to(dev)
                attn[fresh_d] = False
                pos[fresh_d] = 0
                attn, cache = _compact(attn, cache)
            lens = torch.tensor([len(p) for p in pending])
            W = int(lens.max())
            ids = torch.full((len(pending), W), self.pad_id, dtype=torch.long)
            for b, p in enumerate(pending):
                ids[b, : len(p)] = torch.tensor(p)
            lens_d = lens.to(dev)
            chunk_mask = torch.arange(W, device=dev)[None, :] < lens_d[:, None]
            attn = torch.cat([attn, chunk_mask], dim=1)
            logits, values, cache = self.policy(
                ids.to(dev), attention_mask=attn, position_ids=pos[:, None] + torch.arange(W, device=dev),
                past_key_values=cache, use_cache=True,
            )
            pos = pos + lens_d
            rows = torch.arange(len(pending), device=dev)
            logits, values = logits[rows, lens_d - 1], values[rows, lens_d - 1]

            # Decode one action per row.
            live = torch.ones(len(pending), dtype=torch.bool, device=dev)
            steps_tok, steps_lp, steps_v, steps_live = [], [], [], []
            for step in range(self.max_action_tokens):
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
                if step == self.max_action_tokens - 1 or not bool(still.any()):
                    break
                attn = torch.cat([attn, live[:, None]], dim=1)
                logits, values, cache = self.policy(
                    tok[:, None], attention_mask=attn, position_ids=pos[:, None], past_key_values=cache, use_cache=True
                )
                pos = pos + live
                logits, values = logits[:, 0], values[:, 0]
                live = still
            unfed = live  # rows whose last sampled token is not in the cache yet
            gen = torch.stack(steps_tok, 1).tolist()
            gen_lp = torch.stack(steps_lp, 1).tolist()
            gen_v = torch.stack(steps_v, 1).tolist()
            gen_n = torch.stack(steps_live, 1).sum(1).tolist()
            unfed = unfed.tolist()
            self.tokens_generated += sum(gen_n)

            # Step the envs; refill finished rows or drop them once every episode has started.
            keep, fresh_rows = [], []
            for b, env in enumerate(envs):
                ep = episodes[row_episode[b]]
                k = gen_n[b]
                action_tokens = gen[b][:k]
                ep.extend(action_tokens, is_action=True, logprobs=gen_lp[b][:k], values=gen_v[b][:k])
                action = self._decode_action(action_tokens)
                ep.actions.append(action)
                obs, reward, terminated, truncated, info = env.step(action)
                ep.rewards[-1] += float(reward)
                ep.ret += float(reward)
                ep.invalid |= bool(info.get("invalid_action", False))
                last = [action_tokens[-1]] if unfed[b] else []
                if not (terminated or truncated):
                    obs_tokens = list(self.encode(obs))
                    ep.extend(obs_tokens, is_action=False)
                    pending[b] = last + obs_tokens
                    keep.append(b)
                    continue
                ep.success = bool(info.get("success", False))
                if truncated and not terminated:
                    ep.truncated = True
                    ep.extend(list(self.encode(obs)), is_action=False)
                if next_episode < n:
                    i = next_episode
                    next_episode += 1
                    obs, _ = env.reset(seed=seeds[i])
                    episodes[i] = Episode(seed=seeds[i])
                    pending[b] = self.bos + list(self.encode(obs))
                    episodes[i].extend(pending[b], is_action=False)
                    row_episode[b] = i
                    keep.append(b)
                    fresh_rows.append(b)
            if len(keep) < len(envs):
                idx = torch.tensor(keep, dtype=torch.long)
                fresh_set = set(fresh_rows)
                envs = [envs[b] for b in keep]
                row_episode = [row_episode[b] for b in keep]
                pending = [pending[b] for b in keep]
                fresh_rows = [j for j, b in enumerate(keep) if b in fresh_set]
                idx_d = idx.to(dev)
                attn, pos = attn[idx_d], pos[idx_d]
                if keep:
                    cache.batch_select_indices(idx_d)
            fresh = torch.zeros(len(envs), dtype=torch.bool)
            fresh[fresh_rows] = True
        return episodes


def _compact(attn: torch.Tensor, cache: DynamicCache) -> tuple[torch.Tensor, DynamicCache]:
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
        idx = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
        layer.keys = layer.keys.gather(2, idx)
        layer.values = layer.values.gather(2, idx)
    return attn.gather(1, order), cache
