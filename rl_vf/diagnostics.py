"""Value-function diagnostics: is the critic right, and does it see trouble coming?

One pass plays held-out episodes (reset seeds disjoint from training and evaluation) with the
current policy, sampling as in training, and measures its value head V:

- calibration: explained variance of V against the Monte-Carlo return-to-go over action tokens,
  and the bias V − return-to-go by turn index;
- Monte-Carlo ground truth: one uniformly chosen turn of each of the first ``diag_states``
  episodes is replayed (envs are deterministic under their reset seed) and cloned K times; K
  continuations of the policy give V_MC; |V − V_MC| by turn index and by token fraction;
- action ranking: the distinct first actions of those continuations (at most M), each valued by
  K branches that take it and let the policy play on; pairwise ordering accuracy of the critic
  against the MC values (random ordering scores 0.5);
- early failure detection: AUROC of V at fractions of each episode's action tokens for predicting
  failure, and, where the env reports exact values (``info["value"]``), how many turns after a
  decisive mistake the critic's value falls below an alarm level;
- advantage maps: per-token PPO (GAE) and REINFORCE advantages of the same episodes.

V at a state is the value head at the first action token of the turn played from it (read at
the position that predicts that token, DESIGN.md). Returns are discounted once per turn, as GAE.
"""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch

from rl_vf.actor import engine_for, eval_seeds
from rl_vf.advantages import reinforce, returns_to_go, turn_starts
from rl_vf.algos import ALGOS
from rl_vf.branches import BranchPoint, first_action, mc_state_values, play_on, replay, take_actions
from rl_vf.engine import Episode, RolloutBatch, RolloutEngine
from rl_vf.learner import explained_variance, score_batch
from rl_vf.metrics_log import keep_rows_up_to
from rl_vf.report import jsonable, pyplot

DIAG_SEED_OFFSET = 3 * 2**61  # held-out reset seeds: above training's, below evaluation's 2**62 + ...
FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # of an episode's action tokens (failure AUROC)
FRACTION_BINS = 5  # token-fraction bins of the MC error
MAP_EPISODES = 8  # episodes shown in the advantage maps
JSONL = "diagnostics.jsonl"


# ---- metrics on plain numbers --------------------------------------------------------------------
def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(a random positive scores above a random negative), ties counting 1/2; NaN without both."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    diff = s[y][:, None] - s[~y][None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean()) if diff.size else math.nan


def pairwise_rank_accuracy(predicted: Sequence[Sequence[float]],
                           target: Sequence[Sequence[float]]) -> tuple[float, int]:
    """How often ``predicted`` orders two items of a group as ``target`` does.

    Pairs are taken within each group (one state's actions) and only where the targets differ; a
    tie in ``predicted`` counts 1/2. Returns ``(accuracy, pairs)``; NaN when there are no pairs.
    """
    correct, pairs = 0.0, 0
    for pred, true in zip(predicted, target):
        for i in range(len(true)):
            for j in range(i + 1, len(true)):
                if true[i] == true[j]:
                    continue
                agree = np.sign(pred[i] - pred[j]) * np.sign(true[i] - true[j])
                correct += 1.0 if agree > 0 else 0.5 if agree == 0 else 0.0
                pairs += 1
    return (correct / pairs if pairs else math.nan), pairs


def binned_mean(bins: Sequence[int], values: Sequence[float], n_bins: int) -> list[float | None]:
    """Mean of ``values`` in each of ``n_bins`` bins (``bins[i]`` is value i's bin); None if empty."""
    sums, counts = np.zeros(n_bins), np.zeros(n_bins)
    np.add.at(sums, np.asarray(bins, dtype=int), np.asarray(values, dtype=float))
    np.add.at(counts, np.asarray(bins, dtype=int), 1)
    return [float(s / c) if c else None for s, c in zip(sums, counts)]


def detection_delay(true_values: Sequence[float], critic_values: Sequence[float], loss: float,
                    alarm: float) -> float | None:
    """Turns from an episode's decisive mistake until the critic's value is below ``alarm``.

    ``true_values`` holds the env's exact value of every state (the first, then after each step);
    ``critic_values`` the critic's V of every state the agent acted in. The decisive mistake leads
    to the first state whose true value drops from the previous state's to ``loss``; only states
    the agent still acts in count, as the critic reads nothing after the last step. Returns None
    without such a state, ``inf`` if the critic never falls below ``alarm`` from there on.
    """
    for k in range(1, len(critic_values)):
        if true_values[k] == loss < true_values[k - 1]:
            noticed = [j for j in range(k, len(critic_values)) if critic_values[j] < alarm]
            return float(noticed[0] - k) if noticed else math.inf
    return None


def false_alarms(true_values: Sequence[float], critic_values: Sequence[float], loss: float,
                 alarm: float) -> tuple[int, int]:
    """``(alarms, states)``: of the states the agent acted in whose true value is above ``loss``, how
    many the critic already put below ``alarm``. A detection delay means little without this: a
    critic that is always below the alarm "notices" every mistake at once."""
    safe = [v for t, v in zip(true_values, critic_values) if t > loss]
    return sum(v < alarm for v in safe), len(safe)


# ---- token geometry ------------------------------------------------------------------------------
def at_turn_starts(x: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """Per row of (B, T) ``x``: its entries at the first action token of each turn."""
    return [[row[t] for t in turn_starts(m)] for row, m in zip(x.tolist(), mask.tolist())]


def value_bias_by_turn(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> list[float | None]:
    """Mean of V − return-to-go at the first action token of turn k, for every turn index k."""
    turns, errors = [], []
    for vs, rs in zip(at_turn_starts(values, mask), at_turn_starts(returns, mask)):
        turns += range(len(vs))
        errors += [v - r for v, r in zip(vs, rs)]
    return binned_mean(turns, errors, max(turns) + 1)


def values_at_fractions(values: torch.Tensor, mask: torch.Tensor, fractions: Sequence[float]) -> np.ndarray:
    """(B, F): each row's value at its ceil(f * n)-th action token, for n action tokens and each f."""
    out = np.zeros((len(values), len(fractions)))
    for b, (row, m) in enumerate(zip(values.tolist(), mask.tolist())):
        actions = [t for t, is_action in enumerate(m) if is_action]
        # round(): 0.3 * 10 is 3.0000000000000004 in floating point, and must give the 3rd token
        out[b] = [row[actions[max(math.ceil(round(f * len(actions), 9)), 1) - 1]] for f in fractions]
    return out


def rank_actions(engine: RolloutEngine, points: list[BranchPoint], continuations: list[list[Episode]], m: int,
                 k: int, gamma: float, generator, rng: np.random.Generator) -> list[dict]:
    """Per point, up to M distinct actions the policy took first in its continuations, each with its
    MC value (mean over K branches of reward + gamma x return after it) and the critic's.

    The critic's value of an action is reward + gamma x V(next state), V read at the first token of
    the next turn, averaged over the same K branches. Not the value at the action's own last token:
    that position precedes the token (for one-token actions it is V(state), equal for every action)
    and the position after it predicts an observation token, which is never trained. A branch that
    ends with the action has V(next) = 0, as in GAE; an action whose branches all end is ``known``:
    its value is the reward, with nothing for the critic to judge.
    """
    starts, per_point = [], []
    for point, conts in zip(points, continuations):
        distinct = list({text: (text, tokens) for text, tokens in map(first_action, conts)}.values())[:m]
        per_point.append((distinct, take_actions(engine, point, distinct, k, rng, starts)))
    returns, values, _ = play_on(engine, starts, gamma, generator)
    ranked = []
    for distinct, branches in per_point:
        mc, critic, ended = np.zeros(len(distinct)), np.zeros(len(distinct)), np.ones(len(distinct), dtype=bool)
        for j, reward, i in branches:
            g, v = (returns[i], values[i]) if i is not None else (0.0, 0.0)
            mc[j] += (reward + gamma * g) / k
            critic[j] += (reward + gamma * v) / k
            ended[j] &= i is None
        ranked.append({"actions": [text for text, _ in distinct], "mc": mc.tolist(), "critic": critic.tolist(),
                       "known": ended.tolist()})
    return ranked


# ---- advantage maps ------------------------------------------------------------------------------
@dataclass
class AdvantageMaps:
    """Per-token advantages of the same episodes under each credit rule (HTML and PNG)."""

    titles: list[str]  # one per episode
    tokens: list[list[str]]  # token texts
    action_mask: list[list[int]]
    advantages: dict[str, list[list[float]]]  # rule -> per episode, per token


def advantage_maps(tokenizer, episodes: list[Episode], maps: dict[str, torch.Tensor]) -> AdvantageMaps:
    """The maps of ``episodes``, rows i of the (B, T) advantage tensors in ``maps``."""
    return AdvantageMaps(
        titles=[f"seed {e.seed}: return {e.ret:+.3g}, {'success' if e.success else 'failure'}" for e in episodes],
        tokens=[[tokenizer.decode([t]) for t in e.tokens] for e in episodes],
        action_mask=[e.action_mask for e in episodes],
        advantages={rule: [row[:len(e.tokens)] for row, e in zip(adv.tolist(), episodes)]
                    for rule, adv in maps.items()},
    )


def colour_scale(maps: AdvantageMaps, rule: str) -> float:
    """The largest |advantage| of a rule on action tokens: full colour (1 when all are 0)."""
    return max((abs(a) for adv, mask in zip(maps.advantages[rule], maps.action_mask)
                for a, m in zip(adv, mask) if m), default=0.0) or 1.0


def advantage_html(maps: AdvantageMaps) -> str:
    """A self-contained page: one span per token, action tokens red (negative) to blue (positive)
    with the advantage as tooltip, observation tokens grey."""
    scales = {rule: colour_scale(maps, rule) for rule in maps.advantages}
    parts = ["<!doctype html><meta charset='utf-8'><title>advantage maps</title><style>",
             "body{font-family:sans-serif;margin:1.5em} .row{font-family:monospace;white-space:pre;line-height:1.6;"
             "margin:.2em 0 1em} .o{color:#999} .rule{font-weight:bold}</style>",
             "<h1>Per-token advantages</h1><p>Red: negative, blue: positive, full colour at the largest |advantage| "
             "of each rule (" + ", ".join(f"{r}: {s:.3g}" for r, s in scales.items()) + "); grey: observation tokens. "
             "Hover a token for its advantage.</p>"]
    for i, title in enumerate(maps.titles):
        parts.append(f"<h3>{html.escape(title)}</h3>")
        for rule, scale in scales.items():
            spans = [token_span(text, is_action, adv, scale)
                     for text, is_action, adv in zip(maps.tokens[i], maps.action_mask[i], maps.advantages[rule][i])]
            parts.append(f"<div class='rule'>{html.escape(rule)}</div><div class='row'>{''.join(spans)}</div>")
    return "\n".join(parts) + "\n"


def token_span(text: str, is_action: int, advantage: float, scale: float) -> str:
    if not is_action:
        return f"<span class='o'>{html.escape(text)}</span>"
    rgb = "33,102,172" if advantage >= 0 else "178,24,43"
    return (f"<span style='background:rgba({rgb},{min(abs(advantage) / scale, 1.0):.2f})' "
            f"title='{advantage:+.4g}'>{html.escape(text)}</span>")


def advantage_png(maps: AdvantageMaps, path: str) -> None:
    """One panel per rule: episodes as rows, tokens as columns (grey: observation, white: padding)."""
    plt = pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    width = max(len(t) for t in maps.tokens)
    fig, axes = plt.subplots(len(maps.advantages), 1, figsize=(10, 1.2 + 0.3 * len(maps.titles) * len(maps.advantages)),
                             squeeze=False)
    cmap = plt.get_cmap("RdBu")  # low red, high blue
    for ax, rule in zip(axes[:, 0], maps.advantages):
        scale = colour_scale(maps, rule)
        image = np.ones((len(maps.titles), width, 4))
        for i, (adv, mask) in enumerate(zip(maps.advantages[rule], maps.action_mask)):
            image[i, :len(adv)] = [cmap(0.5 + 0.5 * a / scale) if m else (0.8, 0.8, 0.8, 1.0)
                                   for a, m in zip(adv, mask)]
        ax.imshow(image, aspect="auto", interpolation="nearest")
        ax.set_title(f"{rule} advantages")
        ax.set_ylabel("episode")
        fig.colorbar(ScalarMappable(Normalize(-scale, scale), cmap), ax=ax, pad=0.01)
    axes[-1, 0].set_xlabel("token (grey: observation)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- one pass ------------------------------------------------------------------------------------
@dataclass
class Report:
    metrics: dict[str, float]  # value/* scalars (metrics.jsonl, wandb); NaN where undefined
    arrays: dict  # per-position arrays and per-state records (diagnostics.jsonl)
    maps: AdvantageMaps


def heldout_seeds(cfg) -> list[int]:
    return eval_seeds(cfg.seed, cfg.diag_episodes, offset=DIAG_SEED_OFFSET)


def diagnose(policy, tokenizer, make_env: Callable[[], gym.Env], cfg, generator: torch.Generator,
             max_action_tokens: int, device: torch.device | str = "cpu") -> Report:
    """Run every diagnostic on ``cfg.diag_episodes`` held-out episodes (see the module docstring).

    Reads ``cfg``: seed, gamma, lam, baseline, num_envs, minibatch_size and the diag_* keys.
    All randomness comes from ``generator``; the policy is left in the mode it came in.
    """
    engine = engine_for(policy, tokenizer, make_env, cfg, cfg.diag_episodes, max_action_tokens, device)
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator, device=generator.device)))
    was_training = policy.training
    policy.eval()
    try:
        episodes = engine.collect(heldout_seeds(cfg), generator)
        batch = RolloutBatch.from_episodes(episodes, tokenizer.pad_token_id).to(device)
        scores = score_batch(policy, batch, batch.attention_mask.sum(1), cfg.minibatch_size, cfg.update_tokens)
        batch, scores = batch.to("cpu"), {key: value.cpu() for key, value in scores.items()}
        values, mask = scores["values"], batch.action_mask
        critic = at_turn_starts(values, mask)
        metrics, arrays = calibration(values, returns_to_go(batch.rewards, mask, cfg.gamma), mask)
        add(metrics, arrays, failure_detection(values, mask, episodes, critic, cfg.diag_drop_threshold))
        probe = make_env()
        if callable(getattr(probe.unwrapped, "clone", None)):
            add(metrics, arrays, monte_carlo(engine, make_env, episodes, critic, cfg, generator, rng))
        else:  # MC ground truth needs clone() (envs.base.TextEnv)
            metrics.update(dict.fromkeys(MC_METRICS, math.nan))
        probe.close()
        baseline = cfg.baseline if cfg.baseline in ("none", "mean") else "mean"  # held-out episodes have no groups
        maps = {"ppo (GAE)": ALGOS["ppo"].advantages(batch, scores, cfg)[0],
                f"reinforce ({baseline} baseline)": reinforce(batch.returns, mask, baseline=baseline)}
        report_maps = advantage_maps(tokenizer, episodes[:MAP_EPISODES], maps)
    finally:
        engine.close()
        policy.train(was_training)
    return Report(metrics, arrays, report_maps)


def add(metrics: dict, arrays: dict, part: tuple[dict, dict]) -> None:
    metrics.update(part[0])
    arrays.update(part[1])


def calibration(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> tuple[dict, dict]:
    bias = value_bias_by_turn(values, returns, mask)
    m = mask.bool()
    return {
        "value/heldout_explained_variance": explained_variance(values, returns, mask),
        "value/bias_turn0": bias[0],
        "value/bias_mean": float((values[m] - returns[m]).mean()),
    }, {"bias_by_turn": bias}


def failure_detection(values: torch.Tensor, mask: torch.Tensor, episodes: list[Episode], critic: list[list[float]],
                      drop_threshold: float) -> tuple[dict, dict]:
    """AUROC of V at each fraction of the episode for failure; turns until a decisive mistake shows."""
    failed = [not e.success for e in episodes]
    at = values_at_fractions(values, mask, FRACTIONS)
    aurocs = [auroc(-at[:, i], failed) for i in range(len(FRACTIONS))]
    metrics = {"value/auroc_mid": aurocs[FRACTIONS.index(0.5)]}
    arrays = {"auroc_fractions": list(FRACTIONS), "auroc_by_fraction": aurocs}
    known = [v for e in episodes for v in e.true_values if math.isfinite(v)]
    loss, win = (min(known), max(known)) if known else (math.nan, math.nan)
    delays, alarms, safe_states = [], 0, 0
    if loss < win:  # the env reports exact values, and they vary
        alarm = loss + drop_threshold * (win - loss)
        delays = [d for e, vs in zip(episodes, critic)
                  if (d := detection_delay(e.true_values, vs, loss, alarm)) is not None]
        counts = [false_alarms(e.true_values, vs, loss, alarm) for e, vs in zip(episodes, critic)]
        alarms, safe_states = sum(a for a, _ in counts), sum(n for _, n in counts)
        histogram = {("never" if math.isinf(d) else str(int(d))): delays.count(d) for d in sorted(set(delays))}
        arrays["detection"] = {"loss_value": loss, "win_value": win, "alarm": alarm, "delays": histogram}
    noticed = [d for d in delays if math.isfinite(d)]
    metrics["value/decisive_mistakes"] = len(delays)
    metrics["value/detect_delay_turns"] = float(np.mean(noticed)) if noticed else math.nan
    metrics["value/detect_never_rate"] = (len(delays) - len(noticed)) / len(delays) if delays else math.nan
    metrics["value/false_alarm_rate"] = alarms / safe_states if safe_states else math.nan
    return metrics, arrays


MC_METRICS = ("value/mc_abs_error", "value/mc_bias", "value/rank_accuracy", "value/rank_pairs")


def monte_carlo(engine: RolloutEngine, make_env, episodes: list[Episode], critic: list[list[float]], cfg, generator,
                rng: np.random.Generator) -> tuple[dict, dict]:
    """V against V_MC at one random turn of the first ``diag_states`` episodes, and action ranking there."""
    points, diverged = [], 0
    for episode, values in zip(episodes[: cfg.diag_states], critic):
        turn = int(rng.integers(len(episode.actions)))
        start = turn_starts(episode.action_mask)[turn]
        env, obs = replay(make_env, episode, turn)
        shown = list(engine.encode(obs))
        if episode.tokens[start - len(shown):start] != shown:  # the env is not deterministic under its seed
            env.close()  # (e.g. Stockfish below skill 20): this is not the state the critic was read at
            diverged += 1
            continue
        points.append(BranchPoint(episode.seed, turn, episode.tokens[:start], values[turn], start / len(episode.tokens),
                                  env))
    if not points:
        return {**dict.fromkeys(MC_METRICS, math.nan), "value/mc_replay_diverged": diverged}, {}
    mc, continuations = mc_state_values(engine, points, cfg.diag_rollouts, cfg.gamma, generator, rng)
    ranked = rank_actions(engine, points, continuations, cfg.diag_actions, cfg.diag_rollouts, cfg.gamma, generator, rng)
    for p in points:
        p.env.close()
    # Only actions the critic had to judge: paired with a known outcome (an invalid move's penalty),
    # even a constant critic would mostly order them right.
    judged = [[j for j, known in enumerate(r["known"]) if not known] for r in ranked]
    accuracy, pairs = pairwise_rank_accuracy([[r["critic"][j] for j in js] for r, js in zip(ranked, judged)],
                                             [[r["mc"][j] for j in js] for r, js in zip(ranked, judged)])
    errors = [p.value - v for p, v in zip(points, mc)]
    turns = [p.turn for p in points]
    fraction_bins = [min(int(p.token_fraction * FRACTION_BINS), FRACTION_BINS - 1) for p in points]
    return {
        "value/mc_abs_error": float(np.mean(np.abs(errors))),
        "value/mc_bias": float(np.mean(errors)),
        "value/rank_accuracy": accuracy,
        "value/rank_pairs": pairs,
        "value/mc_replay_diverged": diverged,
    }, {
        "mc_abs_error_by_turn": binned_mean(turns, np.abs(errors), max(turns) + 1),
        "mc_abs_error_by_token_fraction": binned_mean(fraction_bins, np.abs(errors), FRACTION_BINS),
        "token_fraction_edges": np.linspace(0, 1, FRACTION_BINS + 1).tolist(),
        "states": [{"seed": p.seed, "turn": p.turn, "token_fraction": p.token_fraction, "value": p.value, "mc_value": v,
                    **r} for p, v, r in zip(points, mc, ranked)],
    }


# ---- output --------------------------------------------------------------------------------------
def write_maps(report: Report, folder: str) -> dict[str, str]:
    """``advantages.html`` and ``advantages.png`` in ``folder``; returns {name: path} of the two."""
    os.makedirs(folder, exist_ok=True)
    files = {"advantages": os.path.join(folder, "advantages.png"),
             "advantages_html": os.path.join(folder, "advantages.html")}
    with open(files["advantages_html"], "w") as f:
        f.write(advantage_html(report.maps))
    advantage_png(report.maps, files["advantages"])
    return files


def report_row(report: Report) -> dict:
    """The scalars and arrays as one JSON-ready row (NaN and inf as null)."""
    return jsonable({**report.metrics, **report.arrays})


def write_update(report: Report, diag_dir: str, update: int) -> dict[str, str]:
    """A training run's pass: maps under ``diag_dir/update_N/`` (their files returned), a row in
    ``diag_dir/diagnostics.jsonl`` (rows from a later update, left by a run that resumed from an
    earlier checkpoint, are dropped)."""
    maps = write_maps(report, os.path.join(diag_dir, f"update_{update:06d}"))
    path = os.path.join(diag_dir, JSONL)
    keep_rows_up_to(path, update - 1)
    with open(path, "a") as f:
        f.write(json.dumps({"update": update, **report_row(report)}) + "\n")
    return maps

