"""Legal-action decoding: sample only the env's legal actions, token by token.

For an env whose ``legal_actions()`` lists every legal move (``TextEnv.legal_actions_complete``),
``constrain_actions: legal`` builds a prefix tree of the legal actions' tokens for each state. At each
decode step only the tokens that stay in the tree are allowed; once an action is complete, so are the
stop tokens. A from-scratch policy then never plays an illegal move, and a policy that has not yet
learnt the notation (a chess move in UCI) still explores among real moves.

Each constrained action token keeps its allowed set (a sorted tuple of token ids, a *key*) with the
episode, so that the training loss scores the same renormalised distribution the token was sampled
from: PPO's ratio, the entropy and the KL penalty all see the masked policy.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import torch

Key = tuple[int, ...]  # the token ids allowed at one decode step, sorted


class ActionTrie:
    """The legal actions of one state as a token prefix tree; node 0 is the root."""

    def __init__(self, actions: Sequence[Sequence[int]], stop_ids: Key):
        children: list[dict[int, int]] = [{}]
        complete = [False]
        for tokens in actions:
            node = 0
            for tok in tokens:
                if tok not in children[node]:
                    children[node][tok] = len(children)
                    children.append({})
                    complete.append(False)
                node = children[node][tok]
            complete[node] = True
        self.children = children
        # One shared tuple per node, so episodes that store a key hold a reference, not a copy.
        self.keys: list[Key] = [tuple(sorted(set(kids) | (set(stop_ids) if done else set())))
                                for kids, done in zip(children, complete)]

    def next(self, node: int, token: int) -> int | None:
        """The node after ``token``, or None once the action has ended (a stop token)."""
        return self.children[node].get(token)

    def keys_along(self, tokens: Sequence[int]) -> list[Key]:
        """The allowed set before each of ``tokens`` (an action and its stop token, e.g. a demonstration's)."""
        keys, node = [], 0
        for tok in tokens:
            if node is None or tok not in self.keys[node]:
                raise ValueError(f"token {tok} leaves the legal actions' tree")
            keys.append(self.keys[node])
            node = self.next(node, tok)
        return keys


class LegalActions:
    """Builds (and caches) the trie of an env's current legal actions."""

    def __init__(self, encode: Callable[[str], Sequence[int]], stop: torch.Tensor):
        self.stop_ids: Key = tuple(stop.nonzero().flatten().tolist())
        self.encode = encode
        self.tries = lru_cache(maxsize=1 << 14)(self._build)  # positions repeat: one trie per distinct list

    def trie(self, env) -> ActionTrie:
        return self.tries(tuple(env.unwrapped.legal_actions()))

    def _build(self, actions: tuple[str, ...]) -> ActionTrie:
        if not actions:
            raise ValueError("the env lists no legal actions in a state it asks an action for")
        return ActionTrie([self.encode(a) for a in actions], self.stop_ids)


def pack_keys(rows: Sequence[Sequence[tuple[int, Key]]], width: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-token allowed sets of N transcripts (each a list of ``(position, key)``) as tensors:
    ``index`` (N, width), 0 where a token is unconstrained, else 1 + the key's row in ``ids``
    (M, K), each distinct key's token ids padded with -1. None when no token is constrained."""
    if not any(rows):
        return None
    table: dict[Key, int] = {}
    index = torch.zeros(len(rows), width, dtype=torch.long)
    for n, row in enumerate(rows):
        for position, key in row:
            index[n, position] = table.setdefault(key, len(table)) + 1
    k = max(len(key) for key in table)
    ids = torch.tensor([list(key) + [-1] * (k - len(key)) for key in table], dtype=torch.long)
    return index, ids


def allowed_mask(index: torch.Tensor, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """(…, V) bool from ``pack_keys``' tensors: the allowed tokens at each position (all where 0)."""
    table = torch.zeros(len(ids) + 1, vocab + 1, dtype=torch.bool, device=ids.device)
    table[0] = True
    table[1:].scatter_(1, ids.masked_fill(ids < 0, vocab), True)
    return table[index, :vocab]
