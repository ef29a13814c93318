"""Legal-action decoding: sample only the env's legal actions, token by token.

For an env whose ``legal_actions()`` lists every legal move (``TextEnv.legal_actions_complete``),
``constrain_actions: legal`` builds a prefix tree of the legal actions' tokens for each state. At each
decode step only the tokens that stay in the tree are allowed; once an action is complete, so are the
stop tokens. A from-scratch policy then never plays an illegal move, and a policy that has not yet
learnt the notation (a chess move in UCI) still explores among real moves. The engine applies the
same rule on the device (``LegalDecode``), so that decoding waits on no host walk per token.

Each constrained action token keeps its allowed set (a sorted tuple of token ids, a *key*) with the
episode, so that the training loss scores the same renormalised distribution the token was sampled
from: PPO's ratio, the entropy and the KL penalty all see the masked policy.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence

import torch

Key = tuple[int, ...]  # the token ids allowed at one decode step, sorted
END, NOTHING = -1, -2  # ActionTrie.sequences: "the action is complete here", padding


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
        # The actions as rows of tokens, each ended by END and padded with NOTHING (LegalDecode).
        width = 1 + max(map(len, actions), default=0)
        self.sequences = torch.full((len(actions), width), NOTHING, dtype=torch.long)
        for m, tokens in enumerate(actions):
            self.sequences[m, : len(tokens) + 1] = torch.tensor([*tokens, END], dtype=torch.long)
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


class LegalDecode:
    """Legal-action decoding of a batch of rows with no host round trip per token (walking the tries
    would read every sampled token on the host): each row's legal actions as token sequences on the
    device, and which of them still match the tokens sampled so far. Step ``s`` allows the ``s``-th
    tokens of the matching sequences, and the stop tokens where one is complete; a row with none left
    (its action has ended) allows everything (it decodes padding). The same masks as the tries' keys.
    """

    def __init__(self, tries: Sequence[ActionTrie], stop: torch.Tensor):
        self.stop, self.vocab = stop, len(stop)
        actions = max(len(t.sequences) for t in tries)
        width = max(t.sequences.shape[1] for t in tries)
        seqs = torch.full((len(tries), actions, width), NOTHING, dtype=torch.long)
        for r, trie in enumerate(tries):
            seqs[r, : len(trie.sequences), : trie.sequences.shape[1]] = trie.sequences
        # As mask columns: tokens stay, END is column V, NOTHING column V + 1 (both cut from the mask).
        self.seqs = seqs.masked_fill(seqs == END, self.vocab).masked_fill(seqs == NOTHING, self.vocab + 1).to(stop.device)
        self.matching = self.seqs[:, :, 0] <= self.vocab  # not the padding of a shorter list

    def allowed(self, step: int) -> torch.Tensor:
        """(R, V) bool: the tokens each row may sample at decode step ``step``."""
        column = self._column(step).masked_fill(~self.matching, self.vocab + 1)
        mask = torch.zeros(len(column), self.vocab + 2, dtype=torch.bool, device=column.device)
        mask.scatter_(1, column, True)
        ended = ~self.matching.any(1, keepdim=True)
        return mask[:, : self.vocab] | (mask[:, self.vocab : self.vocab + 1] & self.stop) | ended

    def advance(self, step: int, tokens: torch.Tensor) -> None:
        """Keep the sequences whose ``step``-th token is ``tokens`` (a stop token ends them all)."""
        self.matching &= self._column(step) == tokens[:, None]

    def _column(self, step: int) -> torch.Tensor:
        """(R, M): the sequences' tokens at ``step`` (the last column past the longest: no live row is there)."""
        return self.seqs[:, :, min(step, self.seqs.shape[2] - 1)]


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
