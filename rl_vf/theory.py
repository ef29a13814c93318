"""What the variance argument predicts for the speed-up of a value arm over outcome-only REINFORCE.

The derivation is in docs/crossover.md; in short: under a perfect critic V, the TD errors
delta_j of an episode's turns are martingale differences (uncorrelated, mean zero given the past).
Outcome-only REINFORCE's advantage (gamma 1, exact mean baseline) is their sum over the whole
episode, R - E[R] = sum_j delta_j; GAE's advantage at turn k is sum_{j>=k} lambda^(j-k) delta_j.
A decision's signal (how much its advantage differs between its right and wrong choice) sits in
its own delta_k and is the same for both, so the episodes each needs for one gradient
signal-to-noise ratio scale with the advantage's variance. The predicted speed-up is the ratio of
the mean variance over the task's decisions:

    speed-up = mean_k sum_j Var(delta_j) / mean_k sum_{j>=k} lambda^(2(j-k)) Var(delta_j).

A Monte-Carlo value from K continuations adds the variance of the return still to come over K
(its estimate's error at turn k). The policy is taken as a coin flip per decision (p = 1/2, the
start of learning); whitening, clipping and the entropy bonus are left out. Where the critic cannot
see what a decision did (Decisions-v0 without feedback) its values carry no per-turn signal, signal
and noise scale together, and the prediction is 1; so it is for baselines that do not assign credit
(reinforce:rloo against reinforce).
"""
from __future__ import annotations

import numpy as np

P = 0.5  # the policy's chance of the right choice at each decision
Q = P * (1 - P)


def decisions(kwargs: dict) -> tuple[np.ndarray, list[int]] | None:
    n = int(kwargs.get("n", 8))
    if not kwargs.get("feedback", True):
        return None
    return np.full(n, Q / n**2), list(range(n))  # each answer moves V by (c - P) / n


def doomed_step(kwargs: dict) -> tuple[np.ndarray, list[int]]:
    length = int(kwargs.get("length", 8))
    j = np.arange(length)
    # Alive at turn j with chance P^j; V = P^(L-j) alive, 0 doomed, so delta_j = P^(L-j-1) (c - P).
    return P**j * P ** (2 * (length - j - 1)) * Q, list(range(length))


def key_to_door(kwargs: dict) -> tuple[np.ndarray, list[int]]:
    delay, std = int(kwargs.get("delay", 16)), float(kwargs.get("distractor_reward_std", 0.0))
    # The key turn (taking it moves V by c - P), the distractors' noise, the door (known by then).
    return np.array([Q] + [std**2] * delay + [0.0]), [0]


# env id -> kwargs -> (Var(delta_j) for each turn j, the turns that hold a decision) under a perfect
# critic that sees what the task shows, or None where the critic cannot tell right from wrong.
MODELS = {"Decisions-v0": decisions, "DoomedStep-v0": doomed_step, "KeyToDoor-v0": key_to_door}


def predicted_speedup(env: str, kwargs: dict, algo: str, lam: float = 1.0, rollouts: int = 1) -> float | None:
    """Episodes outcome-only REINFORCE needs over those ``algo`` needs, by the argument above
    (``rollouts``: vine's K); None for an env without a model here."""
    if env not in MODELS:
        return None
    model = MODELS[env](kwargs)
    if algo == "reinforce" or model is None:
        return 1.0
    var, turns = model
    to_go = np.cumsum(var[::-1])[::-1]  # Var of the return still to come from each turn
    value = [float(lam ** (2.0 * np.arange(len(var) - k)) @ var[k:]) + (to_go[k] / rollouts if algo == "vine" else 0.0)
             for k in turns]
    return float(to_go[0] / np.mean(value))
