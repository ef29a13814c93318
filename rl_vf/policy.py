"""Policy = a Hugging Face causal LM plus a linear value head on its last hidden state, or on the
last hidden state of a separate critic (``Critic``: a trunk of its own, the policy's architecture).

``Policy.forward`` runs the LM trunk (and the critic's, if any) once and returns next-token logits
and a value for every position; the engine (cached, incremental) and the trainer (full recompute)
share it, so the two read logprobs and values the same way. Checkpoints use the ``save_pretrained``
layout, with the value head in ``value_head.safetensors`` beside the LM weights and a separate critic
in the ``critic/`` subfolder (its trunk and value head, in the same layout).
"""
from __future__ import annotations

import copy
import functools
import inspect
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer
from transformers.utils import logging as hf_logging

from rl_vf import llama, lora
from rl_vf.legal import allowed_mask
from rl_vf.tokenizer import DEFAULT_CHARS, char_tokenizer

# transformers draws a bar for every shard it writes or loads: noise on every checkpoint of a run.
hf_logging.disable_progress_bar()

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_DIR = "critic"  # a separate critic's folder inside a checkpoint
TINY = "tiny"  # --model value that builds the built-in model from config
WINDOW_KEY = "rl_vf_attention_window"  # config.json key of a model's attention window (0 or absent: none)


@dataclass
class TinyConfig:
    """Size of the built-in Llama-architecture model (character vocabulary)."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    attention_window: int = 0  # tokens each token sees (itself included); 0: the whole transcript
    max_positions: int = 4096  # RoPE: no parameters; only a long chess game needs this many


def zero_value_head(hidden_size: int) -> nn.Linear:
    """A value head that starts at V = 0 everywhere."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def head_values(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """(B, T) float values of a value head on (B, T, H) hidden states."""
    return head(hidden).squeeze(-1).float()


def save_value_head(state: dict, path: str) -> None:
    """A value head's ``state_dict`` into ``path``."""
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(path, VALUE_HEAD_FILE))


def substate(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix`` (a submodule's ``state_dict`` out of its parent's)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class Critic(nn.Module):
    """A separate value model: a transformer trunk of its own (no LM head) and a linear value head,
    so the value loss never reaches the policy LM and the policy loss never reaches the critic."""

    def __init__(self, trunk: nn.Module, value_head: nn.Linear):
        super().__init__()
        self.trunk = trunk
        self.value_head = value_head

    @classmethod
    def copy_of(cls, policy: "Policy") -> "Critic":
        """A critic that starts as the policy's own value function: copies of its trunk and value head
        (the same architecture and, for a pretrained model, the same weights)."""
        return cls(copy.deepcopy(policy.lm.base_model), copy.deepcopy(policy.value_head))

    @classmethod
    def from_pretrained(cls, path: str) -> "Critic":
        trunk = AutoModel.from_pretrained(path, dtype=torch.float32)
        head = zero_value_head(trunk.config.hidden_size)
        head.load_state_dict(load_file(os.path.join(path, VALUE_HEAD_FILE)))
        return cls(trunk, head)

    def save_pretrained(self, path: str, state: dict) -> None:
        """The trunk and value head, from the critic's whole ``state`` (``Policy.save_pretrained``'s)."""
        self.trunk.save_pretrained(path, state_dict=substate(state, "trunk."))
        save_value_head(substate(state, "value_head."), path)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                queries: torch.Tensor | None = None, window: int = 0) -> torch.Tensor:
        """Values (B, T): position t's scores the state after token t (with ``queries`` (B, Q), those
        columns' alone). ``past_key_values`` (a cache, or None) is extended in place. ``window``: the
        policy's attention window, which the lean forward applies to a 2-D mask (``trunk_hidden``)."""
        hidden = trunk_hidden(self.trunk, input_ids, attention_mask, position_ids, past_key_values, queries, window)
        return head_values(self.value_head, hidden)


class GrowingLayer(DynamicLayer):
    """A KV cache layer that appends in place. Its ``keys`` and ``values`` are views of buffers with
    room to grow (the capacity doubles), so a decode step copies its new column, where
    ``DynamicLayer`` concatenates, copying the whole cache every token (torch.cat was 60% of the 10M
    model's decode time at batch 256). Tensors put in ``keys``/``values`` from outside (the engine's
    column compaction, row selection) are adopted: the next append moves them into new buffers.
    A new buffer also has room for ``headroom`` more columns, so that the engine, which prefills an
    observation and then decodes at most its action budget, never reallocates mid-action."""

    buffers: tuple[torch.Tensor, torch.Tensor] | None = None
    headroom: int = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        end = n + key_states.shape[-2]
        if not self._appendable(end):
            self._grow(n, end, key_states, value_states)
        keys, values = self.buffers
        keys[:, :, n:end] = key_states
        values[:, :, n:end] = value_states
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values

    def reserve(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value buffers, with room for ``end`` columns (moved to bigger ones if they lack
        it); ``keys``/``values`` stay views of them (the engine's static decode writes into them)."""
        n = self.keys.shape[-2]
        if not self._appendable(end):
            self._grow(n, end, self.keys, self.values)
            self.keys, self.values = (buffer[:, :, :n] for buffer in self.buffers)
        return self.buffers

    def keep_columns(self, order: torch.Tensor) -> None:
        """Keep each row's columns ``order`` (B, keep), in that order, as the first ``keep`` columns.
        They move within the buffers, which stay: a new one would be zero-filled and copied into
        at the next append (7% of an engine's TicTacToe collect, which compacts every few turns).
        The stale columns behind them hold finite old keys: masked, they weigh 0 like zeros."""
        keep = order.shape[1]
        index = order[:, None, :, None].expand(-1, self.keys.shape[1], -1, self.keys.shape[-1])
        keys, values = self.keys.gather(2, index), self.values.gather(2, index)
        if self._appendable(keep):
            self.buffers[0][:, :, :keep] = keys
            self.buffers[1][:, :, :keep] = values
            keys, values = self.buffers[0][:, :, :keep], self.buffers[1][:, :, :keep]
        self.keys, self.values = keys, values

    def _grow(self, n: int, end: int, like_keys: torch.Tensor, like_values: torch.Tensor) -> None:
        capacity = max(2 * end, end + self.headroom, 64)
        self.buffers = (self._moved(self.keys, like_keys, n, capacity),
                        self._moved(self.values, like_values, n, capacity))

    def _appendable(self, end: int) -> bool:
        """Whether ``keys``/``values`` are still the buffers' views, with room up to ``end``."""
        if self.buffers is None:
            return False
        keys, values = self.buffers
        return (self.keys.data_ptr() == keys.data_ptr() and self.values.data_ptr() == values.data_ptr()
                and self.keys.shape[0] == keys.shape[0] and end <= keys.shape[2])

    @staticmethod
    def _moved(old: torch.Tensor, new: torch.Tensor, n: int, capacity: int) -> torch.Tensor:
        batch, heads, _, dim = new.shape
        # Zeros: the engine's static decode step weighs unwritten columns 0, and 0 * NaN would be NaN.
        buffer = new.new_zeros(batch, heads, capacity, dim)
        if n:
            buffer[:, :, :n] = old
        return buffer


def growing_cache(headroom: int = 0) -> DynamicCache:
    """A DynamicCache of GrowingLayers with ``headroom``."""
    def new_layer() -> GrowingLayer:
        layer = GrowingLayer()
        layer.headroom = headroom
        return layer

    cache = DynamicCache()
    cache.layer_class_to_replicate = new_layer
    return cache


class PolicyCache:
    """The KV caches of one batch of rows: the policy LM's and, with a separate critic, the critic's.

    Both always hold the same rows and columns: ``layers`` lists the layers of both, so the engine
    compacts columns of both alike, and ``batch_select_indices`` keeps the same rows in both.
    """

    def __init__(self, with_critic: bool, headroom: int = 0):
        self.lm = growing_cache(headroom)
        self.critic = growing_cache(headroom) if with_critic else None
        self.with_critic = with_critic

    @property
    def layers(self) -> list:
        return [*self.lm.layers, *(self.critic.layers if self.critic is not None else [])]

    def batch_select_indices(self, idx: torch.Tensor) -> None:
        self.lm.batch_select_indices(idx)
        if self.critic is not None:
            self.critic.batch_select_indices(idx)


class Policy(nn.Module):
    def __init__(self, lm: nn.Module, value_head: nn.Linear | None = None, critic: Critic | None = None):
        super().__init__()
        self.lm = lm
        self.value_head = value_head if value_head is not None else zero_value_head(lm.config.hidden_size)
        # With a separate critic its values replace the value head's, which then goes unused.
        self.register_module("critic", critic)
        # (V,) bool of tokens the policy may emit in an action (see action_token_mask); None: all.
        self.register_buffer("allowed_tokens", None, persistent=False)
        self.autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 (config precision); None: fp32
        # With LoRA adapters on ``lm`` (rl_vf.lora): the base model's folder and the adapters' rank and alpha.
        self.lora: dict | None = None
        # False once FSDP gathers the weights into fresh memory after every step (rl_vf.distributed):
        # a CUDA graph reads them at the addresses it was captured with, so decoding goes without graphs.
        self.weights_stay_put = True

    def autocast(self, device: torch.device):
        """The mixed-precision context of every forward pass (disabled when ``autocast_dtype`` is None)."""
        # No cache of cast weights: a CUDA graph captured in one context must not keep its freed casts.
        return torch.autocast(device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None, cache_enabled=False)

    @property
    def config(self):
        return self.lm.config

    def new_cache(self, values: bool = True, headroom: int = 0) -> PolicyCache:
        """An empty KV cache for incremental ``forward`` calls (the engine's). ``values=False`` leaves a
        separate critic out: forward calls with this cache then return values of 0 and cost no critic pass
        (rollouts whose values nobody reads). ``headroom``: see ``GrowingLayer``."""
        return PolicyCache(with_critic=self.critic is not None and values, headroom=headroom)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values: PolicyCache | None = None,
                use_cache=False, queries: torch.Tensor | None = None):
        """Returns ``(logits (B, T, V), values (B, T), past_key_values)``.

        Position t's logits and value are those of the state after token t, i.e. they predict
        and score token t + 1. ``past_key_values`` (from ``new_cache``) is extended in place.
        ``queries`` (B, Q) column indices: logits (B, Q, V) and values (B, Q) of those columns alone.
        """
        if use_cache and past_key_values is None:
            past_key_values = self.new_cache()
        lm_cache = past_key_values.lm if past_key_values is not None else None
        critic_cache = past_key_values.critic if past_key_values is not None else None
        attention_mask, window = self.attention_mask(attention_mask, input_ids), self.attention_window
        with self.autocast(input_ids.device):
            hidden = trunk_hidden(self.lm.base_model, input_ids, attention_mask, position_ids, lm_cache, queries, window)
            logits = self.lm.get_output_embeddings()(hidden).float()
            if self.critic is None:
                values = head_values(self.value_head, hidden)
            elif past_key_values is not None and not past_key_values.with_critic:
                values = torch.zeros(hidden.shape[:2], device=hidden.device)
            else:
                values = self.critic(input_ids, attention_mask, position_ids, critic_cache, queries, window)
        if self.allowed_tokens is not None:
            logits = logits.masked_fill(~self.allowed_tokens, float("-inf"))
        return logits, values, past_key_values

    def score(self, tokens: torch.Tensor, attention_mask: torch.Tensor, with_entropy: bool = False,
              legal: tuple[torch.Tensor, torch.Tensor] | None = None, scored: torch.Tensor | None = None) -> dict:
        """Full-transcript recompute, aligned with ``tokens``: entry t scores token t.

        ``logprobs[:, t]`` and ``values[:, t]`` are read at position t - 1 (the position that
        predicts token t), column 0 is 0. ``next_value[:, t]`` is the value after token t
        (used to bootstrap truncated episodes from their last token). ``legal`` (``RolloutBatch.legal``)
        restricts each token's distribution to the set it was sampled from under legal-action decoding.
        ``scored`` (B, T), e.g. the action mask: score those tokens alone (the other entries are 0;
        ``next_value`` holds the values before them and after each row's last token), computing the
        last layer and the head only at the positions that read them (``llama.forward``'s ``queries``).
        """
        batch, width = tokens.shape
        if scored is None:
            queries = None
            columns = torch.arange(width, device=tokens.device).expand(batch, -1)
            predicts = columns < width - 1
        else:
            queries, valid = scoring_positions(scored, attention_mask)
            columns = queries
            predicts = valid & scored.gather(1, (queries + 1).clamp(max=width - 1)).bool() & (queries < width - 1)
        logits, values, _ = self(tokens, attention_mask=attention_mask, queries=queries)
        following = (columns + 1).clamp(max=width - 1)  # position t predicts token t + 1
        if legal is not None:
            index, ids = legal  # each position takes its next token's allowed set
            allowed = torch.where(predicts, index.gather(1, following), 0)
            logits = logits.masked_fill(~allowed_mask(allowed, ids, logits.shape[-1]), float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)
        token_logp = logp.gather(-1, tokens.gather(1, following)[..., None]).squeeze(-1)
        # Observation tokens outside the allowed action tokens score -inf; they carry no
        # gradient, but -inf would turn into NaN in masked sums, so zero them here.
        token_logp = torch.where(torch.isfinite(token_logp), token_logp, 0.0)
        at = torch.where(predicts, columns + 1, width)  # column ``width``: dropped
        out = {"logprobs": place(token_logp, at, width), "values": place(values, at, width),
               "next_value": values if scored is None else place(values, torch.where(valid, columns, width), width)}
        if with_entropy:
            # Tokens masked to -inf have p = 0; where() keeps 0 * -inf (and its gradient) out.
            p = logp.exp()
            out["entropy"] = place(-(p * torch.where(p > 0, logp, 0.0)).sum(-1), at, width)
        return out

    @property
    def attention_window(self) -> int:
        """Tokens each token attends to, itself included (0: all before it); saved in the LM's config."""
        return getattr(self.lm.config, WINDOW_KEY, 0) or 0

    @property
    def sliding_window(self) -> int:
        """The window of the LM's own sliding-window attention, which ``visible`` then masks: on the layers
        its config's ``layer_types`` name ``sliding_attention`` (Gemma2/3, Qwen2/3 with ``use_sliding_window``),
        or on every layer where it lists none (Mistral, Phi-3). 0: none, or layer types besides full and
        sliding (chunked, linear attention), whose masks stay Hugging Face's own."""
        config = self.lm.config
        types = set(getattr(config, "layer_types", None) or ["sliding_attention"])
        if "sliding_attention" not in types or not types <= {"full_attention", "sliding_attention"}:
            return 0
        return getattr(config, "sliding_window", None) or 0

    def visible(self, live: torch.Tensor, queries: int | torch.Tensor):
        """``llama.visible`` under this LM's windows: one 4-D bool mask, or, with sliding-window layers beside
        full ones, one per layer type (a mapping Hugging Face models take as built). Every window counts a
        row's own tokens: Hugging Face's counts cache columns, which in the engine hold padding and old episodes."""
        full = llama.visible(live, queries, self.attention_window)
        if not self.sliding_window:
            return full
        sliding = llama.visible(live, queries, min(w for w in (self.attention_window, self.sliding_window) if w))
        if getattr(self.lm.config, "layer_types", None) is None:  # every layer slides
            return sliding
        return {"full_attention": full, "sliding_attention": sliding}

    def attention_mask(self, attention_mask: torch.Tensor | dict | None, input_ids: torch.Tensor):
        """The mask the transformer gets: the 2-D padding mask as it is, or with an attention window
        (rl_vf's or the LM's sliding-window layers) the masks of ``visible``; masks already built
        (4-D bool (B, 1, Q, K), or a mapping of them) are taken as they are. 4-D masks go in the form
        the attention implementation adds or selects by."""
        if isinstance(attention_mask, dict) or (attention_mask is not None and attention_mask.dim() == 4):
            allowed = attention_mask  # already built by the caller (the engine's static decode step)
        elif not (self.attention_window or self.sliding_window) or llama.supports(self.lm.base_model):
            return attention_mask  # (rl_vf's lean forward applies the window itself: by bands where it can)
        else:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            allowed = self.visible(attention_mask, input_ids.shape[1])
        if self.lm.config._attn_implementation == "eager":  # eager adds the mask to the scores
            return {k: additive(m) for k, m in allowed.items()} if isinstance(allowed, dict) else additive(allowed)
        return allowed

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """The parameters of each separately trained network, each clipped to its own gradient norm:
        one group with a shared trunk; the policy (LM and its unused value head) and the critic apart,
        so that neither's gradient scales down the other's step."""
        if self.critic is None:
            return [list(self.parameters())]
        critic = {id(p) for p in self.critic.parameters()}
        return [[p for p in self.parameters() if id(p) not in critic], list(self.critic.parameters())]

    def critic_parameters(self) -> list[nn.Parameter]:
        """The value function's parameters: the separate critic's, or the value head on a shared trunk
        (the trunk is the policy's; ``critic_lr`` and the critic warm-up leave it to the policy)."""
        return list((self.critic if self.critic is not None else self.value_head).parameters())

    def add_adapters(self, base: str, rank: int, alpha: float, seed: int = 0) -> None:
        """LoRA on the LM (``rl_vf.lora``): from here on only the adapters and the value head train."""
        lora.add_adapters(self.lm, rank, alpha, seed)
        self.lora = {"base": os.path.abspath(base), "rank": rank, "alpha": alpha}

    def save_pretrained(self, path: str, tokenizer=None, state: dict | None = None) -> None:
        """The LM (with LoRA: its config, adapters and base folder), value head, critic and tokenizer.
        ``state``: the whole ``state_dict`` to write (FSDP's, gathered: ``Learner.policy_state``), else
        the policy's own."""
        state = self.state_dict() if state is None else state
        if self.lora is not None:
            os.makedirs(path, exist_ok=True)
            self.lm.config.save_pretrained(path)
            lora.save(substate(state, "lm."), path, **self.lora)
        else:
            self.lm.save_pretrained(path, state_dict=substate(state, "lm."))
        save_value_head(substate(state, "value_head."), path)
        if self.critic is not None:
            self.critic.save_pretrained(os.path.join(path, CRITIC_DIR), substate(state, "critic."))
        if tokenizer is not None:
            tokenizer.save_pretrained(path)


def additive(allowed: torch.Tensor) -> torch.Tensor:
    """A bool attention mask in the form eager attention adds to its scores: 0, or the float minimum."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, torch.finfo(torch.float32).min)


def trunk_hidden(trunk: nn.Module, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                 queries: torch.Tensor | None = None, window: int = 0):
    """The last hidden states of a transformer trunk (an LM's ``base_model``, a critic's trunk):
    ``rl_vf.llama``'s lean forward where it computes the same function, else the model's own.
    ``past_key_values`` (a cache, or None for no cache) is extended in place. ``queries`` (B, Q):
    only those columns' states (the lean forward's last layer computes no others). ``window``: rl_vf's
    attention window, which the lean forward applies to a 2-D mask (``Policy.attention_mask`` leaves it
    2-D for the lean forward, and builds the window's masks for every other model)."""
    if llama.supports(trunk):
        return llama.forward(trunk, input_ids, attention_mask, position_ids, past_key_values, queries, window)
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=past_key_values is not None, **{cache_kwarg(trunk): past_key_values}).last_hidden_state
    return hidden if queries is None else llama.rows(hidden, queries)


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute ``model``'s layer activations in the backward (where gradients are taken): transformers'
    ``activation_checkpointing_enable`` (5.x releases before it: ``gradient_checkpointing_enable``), which
    sets the flag ``rl_vf.llama``'s lean forward reads too."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def cache_kwarg(model: nn.Module) -> str:
    """The name of a Hugging Face model's cache argument: transformers 5.25 renamed ``past_key_values``
    to ``cache`` (the old name goes in 5.40), earlier 5.x releases know only the old one."""
    return _cache_kwarg(type(model))


@functools.lru_cache(maxsize=None)
def _cache_kwarg(model_class: type) -> str:  # read once per class: trunk_hidden runs every decode step
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def scoring_positions(scored: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns ``Policy.score`` computes for the tokens ``scored`` (B, T): the position before each
    scored token, and each row's last token (its value bootstraps a truncated episode). Returns
    ``(queries (B, Q), valid (B, Q))``: Q is the most any row needs, and a row that needs fewer has
    its other entries pointing at columns whose results nobody reads (``valid`` False)."""
    wanted = torch.zeros_like(scored, dtype=torch.bool)
    wanted[:, :-1] = scored[:, 1:].bool()
    columns = torch.arange(scored.shape[1], device=scored.device)
    last = (attention_mask.bool() * columns).argmax(1)
    wanted[torch.arange(len(wanted), device=wanted.device), last] = True
    count = int(wanted.sum(1).max())
    queries = torch.sort(wanted.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :count]
    return queries, wanted.gather(1, queries)


def place(x: torch.Tensor, columns: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) zeros with ``x`` (B, Q) at ``columns`` (B, Q); entries whose column is ``width`` are dropped."""
    return torch.zeros(len(x), width + 1, dtype=x.dtype, device=x.device).scatter(1, columns, x)[:, :width]


def build_tiny(tokenizer, size: TinyConfig = TinyConfig(), seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    setattr(config, WINDOW_KEY, size.attention_window)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2", "Qwen/Qwen2.5-0.5B"
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]  # config, weights, tokenizer


def hub_snapshot(model: str) -> str:
    """The local folder of Hugging Face hub id ``model``: its copy in the local cache, else a download
    where the hub can be reached. Anything that is not a folder and not shaped like a hub id is a
    missing folder; offline (HF_HUB_OFFLINE, or no network: a 3-second check, not transformers' minute
    of retries) the error says so and how to bring the model."""
    if not HUB_ID.match(model):
        raise FileNotFoundError(f"model {model!r}: no such folder (and not 'tiny' or a hub id like 'org/name')")
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(model, allow_patterns=HUB_FILES, local_files_only=True)
    except Exception:  # not cached: whatever huggingface_hub raises for it
        pass
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    else:
        endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        try:
            socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
        except OSError as e:
            why = f"{endpoint.hostname} cannot be reached ({e})"
        else:
            return snapshot_download(model, allow_patterns=HUB_FILES)
    raise FileNotFoundError(
        f"model {model!r} is not a local folder, and as a Hugging Face hub id it is neither in the local cache "
        f"nor downloadable: {why}. Where there is network, save it with "
        f"AutoModelForCausalLM.from_pretrained({model!r}).save_pretrained(DIR) (and its tokenizer), copy DIR "
        f"here and pass --model DIR")


def load_policy(model: str = TINY, seed: int = 0, tiny: TinyConfig = TinyConfig(), alphabet: str = DEFAULT_CHARS):
    """``(policy, tokenizer)`` from ``"tiny"`` (built from config) or a local HF model folder.

    The tiny model's character vocabulary is ``alphabet`` (the trainer passes the env's).
    A folder saved by ``Policy.save_pretrained`` brings its value head back, and its separate
    critic if it has one; any other causal LM gets a fresh zero-initialised value head.
    """
    if model == TINY:
        tokenizer = char_tokenizer(alphabet)
        lm = build_tiny(tokenizer, tiny, seed)
        return Policy(lm).float(), tokenizer
    spec = lora.saved(model)
    if spec is not None:  # adapters on a base model folder: the base, then the adapters and this value head
        policy, tokenizer = load_policy(spec["base"], seed, tiny, alphabet)
        lora.load(policy.lm, model, spec)
        policy.lora = spec
        policy.value_head.load_state_dict(load_file(os.path.join(model, VALUE_HEAD_FILE)))
        return policy, tokenizer
    if not os.path.isdir(model):
        model = hub_snapshot(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    policy = Policy(lm)
    head_file = os.path.join(model, VALUE_HEAD_FILE)
    if os.path.exists(head_file):
        policy.value_head.load_state_dict(load_file(head_file))
    if os.path.isdir(os.path.join(model, CRITIC_DIR)):
        policy.critic = Critic.from_pretrained(os.path.join(model, CRITIC_DIR))
    return policy, tokenizer
