"""Policy = a Hugging Face causal LM plus a linear value head on its last hidden state.

``Policy.forward`` runs the LM trunk once and returns next-token logits and a value for every
position; the engine (cached, incremental) and the trainer (full recompute) share it, so the two
read logprobs and values the same way. Checkpoints use the ``save_pretrained`` layout, with the
value head in ``value_head.safetensors`` beside the LM weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rl_vf.tokenizer import DEFAULT_CHARS, char_tokenizer

VALUE_HEAD_FILE = "value_head.safetensors"
TINY = "tiny"  # --model value that builds the built-in model from config


@dataclass
class TinyConfig:
    """Size of the built-in Llama-architecture model (character vocabulary)."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 4096  # RoPE: no parameters; only a long chess game needs this many


class Policy(nn.Module):
    def __init__(self, lm: nn.Module, value_head: nn.Linear | None = None):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        if value_head is None:
            value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(value_head.weight)
            nn.init.zeros_(value_head.bias)
        self.value_head = value_head
        # (V,) bool of tokens the policy may emit in an action (see action_token_mask); None: all.
        self.register_buffer("allowed_tokens", None, persistent=False)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        """Returns ``(logits (B, T, V), values (B, T), past_key_values)``.

        Position t's logits and value are those of the state after token t, i.e. they predict
        and score token t + 1.
        """
        out = self.lm.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        logits = self.lm.get_output_embeddings()(hidden).float()
        if self.allowed_tokens is not None:
            logits = logits.masked_fill(~self.allowed_tokens, float("-inf"))
        values = self.value_head(hidden).squeeze(-1).float()
        return logits, values, out.past_key_values

    def score(self, tokens: torch.Tensor, attention_mask: torch.Tensor, with_entropy: bool = False) -> dict:
        """Full-transcript recompute, aligned with ``tokens``: entry t scores token t.

        ``logprobs[:, t]`` and ``values[:, t]`` are read at position t - 1 (the position that
        predicts token t), column 0 is 0. ``next_value[:, t]`` is the value after token t
        (used to bootstrap truncated episodes from their last token).
        """
        logits, values, _ = self(tokens, attention_mask=attention_mask)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        zero = torch.zeros_like(values[:, :1])
        token_logp = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
        # Observation tokens outside the allowed action tokens score -inf; they carry no
        # gradient, but -inf would turn into NaN in masked sums, so zero them here.
        token_logp = torch.where(torch.isfinite(token_logp), token_logp, 0.0)
        out = {
            "logprobs": torch.cat([zero, token_logp], 1),
            "values": torch.cat([zero, values[:, :-1]], 1),
            "next_value": values,
        }
        if with_entropy:
            # Tokens masked to -inf have p = 0; where() keeps 0 * -inf (and its gradient) out.
            p = logp.exp()
            out["entropy"] = torch.cat([zero, -(p * torch.where(p > 0, logp, 0.0)).sum(-1)], 1)
        return out

    def save_pretrained(self, path: str, tokenizer=None) -> None:
        self.lm.save_pretrained(path)
        save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()}, os.path.join(path, VALUE_HEAD_FILE))
        if tokenizer is not None:
            tokenizer.save_pretrained(path)


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
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_policy(model: str = TINY, seed: int = 0, tiny: TinyConfig = TinyConfig(), alphabet: str = DEFAULT_CHARS):
    """``(policy, tokenizer)`` from ``"tiny"`` (built from config) or a local HF model folder.

    The tiny model's character vocabulary is ``alphabet`` (the trainer passes the env's).
    A folder saved by ``Policy.save_pretrained`` brings its value head back; any other causal
    LM gets a fresh zero-initialised value head.
    """
    if model == TINY:
        tokenizer = char_tokenizer(alphabet)
        lm = build_tiny(tokenizer, tiny, seed)
        return Policy(lm).float(), tokenizer
    if not os.path.isdir(model):
        raise FileNotFoundError(f"model {model!r} is neither 'tiny' nor a local model folder (no hub downloads here)")
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    policy = Policy(lm)
    head_file = os.path.join(model, VALUE_HEAD_FILE)
    if os.path.exists(head_file):
        policy.value_head.load_state_dict(load_file(head_file))
    return policy, tokenizer
