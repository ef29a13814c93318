"""A lean forward pass of Hugging Face's ``LlamaModel``: the same weights and the same function,
with fewer operations and no per-call machinery.

Hugging Face's forward spends most of a small model's time in Python around the arithmetic: mask
building, output capturing, rotary-embedding modules, hooks. rl_vf calls the trunk hundreds of
times per update (every prefill and decode token of a rollout, every training minibatch), so the
built-in tiny model and any plain Llama run through ``forward`` below when ``supports`` says so
(default RoPE, no biases, SiLU MLP); every other model runs Hugging Face's own forward. The weights
stay the Hugging Face modules' parameters, so checkpoints, optimizers and gradients are unchanged.
Tested against Hugging Face's forward, with and without a KV cache (tests/test_llama.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # attention, then MLP


def supports(trunk: nn.Module) -> bool:
    """Whether ``trunk`` (a causal LM's ``base_model``) is a Llama that ``forward`` computes exactly."""
    config = getattr(trunk, "config", None)
    return (type(trunk).__name__ == "LlamaModel" and getattr(trunk.rotary_emb, "rope_type", None) == "default"
            and not config.attention_bias and not config.mlp_bias and config.hidden_act == "silu"
            and not config.attention_dropout
            and all(type(getattr(block, name)) is nn.Linear for layer in trunk.layers
                    for block, names in ((layer.self_attn, PROJECTIONS[:4]), (layer.mlp, PROJECTIONS[4:]))
                    for name in names))
    # (the last: plain linear projections, whose weights are the whole function; LoRA wraps them)


def forward(trunk: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None, past_key_values=None,
            queries: torch.Tensor | None = None, window: int = 0) -> torch.Tensor:
    """The last hidden states (B, T, H) of ``trunk`` (a LlamaModel) for ``input_ids`` (B, T); with
    ``queries`` (B, Q) indices into the T new columns, only those columns' (B, Q, H), which the last
    layer then computes alone (its keys and values, cached too, still come from every column):
    scoring reads a few action tokens of a long transcript, and a rollout's prefill of an
    observation the last column's, so the last layer's rest, the final norm and the LM head would
    be spent on columns nobody reads.

    ``attention_mask``: None (causal), a 2-D (B, K) mask of the columns each row attends to (its
    last T columns are the new tokens; K = cached columns + T), or a 4-D (B, 1, T, K) mask as built
    by the caller (bool, or additive). ``past_key_values``: a Hugging Face cache, extended in place.
    Each query always attends to itself, so a padding query never sees an empty row (NaN). ``window``
    (rl_vf's attention window; 0: none) applies to the masks built here (``visible``), not to a 4-D one.
    """
    config = trunk.config
    hidden = trunk.embed_tokens(input_ids)
    batch, new = input_ids.shape
    past = past_key_values.get_seq_length() if past_key_values is not None else 0
    if position_ids is None:
        position_ids = torch.arange(past, past + new, device=input_ids.device)[None].expand(batch, -1)
    if attention_mask is None and past:  # new tokens after cached ones: causal needs an explicit mask
        attention_mask = torch.ones(batch, past + new, dtype=torch.bool, device=input_ids.device)
    cos, sin = rotary(trunk.rotary_emb, position_ids, hidden.dtype)
    if attention_mask is not None and attention_mask.dim() == 2 and not past and right_padded(attention_mask):
        # Each row's tokens come first: causal attention gives them the same outputs as the padding
        # mask would (padding queries differ, and nothing reads them), through SDPA's fused causal
        # kernel instead of a (B, 1, T, T) mask: no T x T buffer, and about half the time on long chess
        # transcripts (docs/benchmark.md, "First update of every env"). With a window, the same holds
        # for the band of the window's last columns (``band_attention``).
        attention_mask = None
    band = window if attention_mask is None else 0
    mask = (attention_mask if attention_mask is None or attention_mask.dim() == 4
            else visible(attention_mask, new, window))
    # Hugging Face's flag (``gradient_checkpointing_enable``): keep only each layer's input for the
    # backward and recompute the rest there.
    recompute = getattr(trunk, "gradient_checkpointing", False) and past_key_values is None and torch.is_grad_enabled()
    layers = trunk.layers[: config.num_hidden_layers]
    for i, layer in enumerate(layers):
        only = queries if i == len(layers) - 1 else None
        if recompute:
            hidden = checkpoint(decoder_layer, layer, hidden, cos, sin, mask, None, i, only, band, use_reentrant=False)
        else:
            hidden = decoder_layer(layer, hidden, cos, sin, mask, past_key_values, i, only, band)
    return rms_norm(trunk.norm, hidden)


def decoder_layer(layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  mask: torch.Tensor | None, past_key_values=None, index: int = 0,
                  queries: torch.Tensor | None = None, band: int = 0) -> torch.Tensor:
    """One LlamaDecoderLayer on ``hidden`` (B, T, H); the new keys and values extend ``past_key_values``
    (as its layer ``index``) where given. With ``queries`` (B, Q) column indices: the outputs (B, Q, H)
    of those columns alone. ``band`` (with ``mask`` None): each column attends to itself and the
    ``band`` - 1 columns before it (0: all before it)."""
    config, attn, mlp = layer.self_attn.config, layer.self_attn, layer.mlp
    batch, new = hidden.shape[:2]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    x = rms_norm(layer.input_layernorm, hidden)
    k = F.linear(x, attn.k_proj.weight).view(batch, new, kv_heads, head_dim).transpose(1, 2)
    v = F.linear(x, attn.v_proj.weight).view(batch, new, kv_heads, head_dim).transpose(1, 2)
    k = k * cos + rotate_half(k) * sin
    if queries is not None:
        hidden, x = rows(hidden, queries), rows(x, queries)
        cos, sin = rows(cos.expand(batch, -1, -1, -1), queries, 2), rows(sin.expand(batch, -1, -1, -1), queries, 2)
        mask = query_mask(mask, queries, new, band)
    q = F.linear(x, attn.q_proj.weight).view(batch, x.shape[1], heads, head_dim).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    if past_key_values is not None:
        k, v = past_key_values.update(k, v, index)
    if mask is None and band and queries is None and new > band:
        out = band_attention(q, k, v, band, attn.scaling)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and new > 1,
                                             scale=attn.scaling, enable_gqa=kv_heads != heads)
    hidden = hidden + F.linear(out.transpose(1, 2).reshape(batch, x.shape[1], heads * head_dim), attn.o_proj.weight)
    x = rms_norm(layer.post_attention_layernorm, hidden)
    return hidden + F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight),
                             mlp.down_proj.weight)


def rows(x: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``x``'s entries at ``index`` (B, Q) along ``dim``, row by row: (B, Q, ...) from (B, T, ...)."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = index.shape
    return x.gather(dim, index.view(shape).expand(*x.shape[:dim], index.shape[1], *x.shape[dim + 1:]))


def query_mask(mask: torch.Tensor | None, queries: torch.Tensor, columns: int, band: int = 0) -> torch.Tensor:
    """The (B, 1, Q, K) attention mask of the query columns ``queries`` (B, Q): the rows of a 4-D mask,
    or, for causal attention (None), the columns at or before each query (with a ``band``, only its
    last ``band`` of them)."""
    if mask is None:
        behind = queries[..., None] - torch.arange(columns, device=queries.device)
        return ((behind >= 0) & (behind < (band or columns)))[:, None]
    return rows(mask.expand(len(queries), -1, -1, -1), queries, 2)


def band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, band: int, scale: float) -> torch.Tensor:
    """Causal attention (B, heads, T, D) in which each column sees itself and the ``band`` - 1 before
    it, by blocks: each block of ``band`` queries attends to its own block's keys and the previous
    block's (2 * band keys), not to all T, so time and memory grow as T * band instead of T * T.
    Grouped key/value heads are repeated to the query heads first."""
    batch, heads, t, dim = q.shape
    k, v = (x.repeat_interleave(heads // x.shape[1], dim=1) for x in (k, v))
    blocks = -(-t // band)
    q = F.pad(q, (0, 0, 0, blocks * band - t)).reshape(batch, heads * blocks, band, dim)

    def paired(x):  # (B, heads * blocks, 2 * band, D): block j's keys are columns (j-1)*band .. (j+1)*band - 1
        x = F.pad(x, (0, 0, band, blocks * band - t)).view(batch, heads, blocks + 1, band, dim)
        return torch.cat((x[:, :, :-1], x[:, :, 1:]), dim=3).reshape(batch, heads * blocks, 2 * band, dim)

    query = torch.arange(band, device=q.device)[:, None]
    key = torch.arange(2 * band, device=q.device)
    mask = (key > query) & (key <= query + band)  # key column - query column in (-band, 0]
    mask = mask.expand(blocks, -1, -1).clone()
    mask[0, :, :band] = False  # the first block has no block before it (those keys are zero padding)
    mask = mask.repeat(heads, 1, 1)
    out = F.scaled_dot_product_attention(q, paired(k), paired(v), attn_mask=mask, scale=scale)
    return out.reshape(batch, heads, blocks * band, dim)[:, :, :t]  # (a CUDA kernel returns another memory layout)


def right_padded(mask: torch.Tensor) -> bool:
    """Whether every row of a 2-D padding mask is its tokens, then only padding."""
    mask = mask.bool()
    return bool((mask[:, 1:] <= mask[:, :-1]).all())


def visible(live: torch.Tensor, queries: int | torch.Tensor, window: int = 0) -> torch.Tensor:
    """(B, 1, Q, K) bool: which columns each query attends to.

    ``live`` (B, K) marks the columns a row attends to (its tokens; padding and an old episode's
    columns are False). ``queries``: the query columns (Q,), or their count when they are the last
    columns. Each query sees the live columns at or before its own and always itself (a padding
    query would otherwise see nothing, and softmax over nothing is NaN). With a ``window`` (rl_vf's
    attention window; 0: none) only those less than ``window`` positions behind it: a token's position
    is its row's count of live columns before it, as the engine and a right-padded recompute number
    them, so the window counts a row's tokens, not cache columns.
    """
    live = live.bool()
    columns = torch.arange(live.shape[1], device=live.device)
    query_columns = columns[-queries:] if isinstance(queries, int) else queries
    allowed = live[:, None, :] & (columns <= query_columns[:, None])  # (B, Q, K)
    if window:
        position = live.cumsum(1) - 1
        allowed = allowed & (position[:, query_columns, None] - position[:, None, :] < window)
    return (allowed | (columns == query_columns[:, None]))[:, None]


def rotary(embedding: nn.Module, position_ids: torch.Tensor, dtype: torch.dtype):
    """cos and sin (B, 1, T, head_dim) of Hugging Face's default rotary embedding."""
    freqs = position_ids[..., None].float() * embedding.inv_freq.float()
    angles = torch.cat((freqs, freqs), dim=-1)
    scale = embedding.attention_scaling
    return (angles.cos() * scale).to(dtype)[:, None], (angles.sin() * scale).to(dtype)[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``LlamaRMSNorm``: normalised in fp32, scaled in the input's dtype."""
    x32 = x.float()
    return norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)).to(x.dtype)
