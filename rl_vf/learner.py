"""The learner: scores batches, builds minibatches, computes the named loss terms and owns the
optimizer (the one place that data-parallel training touches). What an algorithm contributes, its
advantages and its own loss terms, comes from the algorithm object (``rl_vf.algos``)."""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch

from rl_vf import lora
from rl_vf.advantages import returns_to_go
from rl_vf.algos.losses import kl_to_reference, masked_mean, policy_loss, whiten
from rl_vf.algos.reinforce import Reinforce
from rl_vf.config import ConfigError, TrainConfig
from rl_vf.distributed import Scorer, World
from rl_vf.engine import RolloutBatch
from rl_vf.policy import substate


OUTCOME_ONLY = Reinforce()  # the policy's advantages while the critic warms up


class NonFiniteLoss(RuntimeError):
    """A loss that is NaN or inf; ``terms`` holds its named parts (none: another process's loss)."""

    def __init__(self, terms: dict[str, float]):
        super().__init__(", ".join(f"{k}={v:.4g}" for k, v in terms.items()) or "in another process")
        self.terms = terms


@dataclass
class Update:
    """Numbers from one policy update, averaged over its minibatch steps."""

    stats: dict
    tokens: int


class Learner:
    """Trains ``policy`` (and its critic) on rollout batches with the algorithm's advantages.

    ``generator`` shuffles minibatches (the run's one random stream, shared with the actor).
    ``world``: the data-parallel processes (``rl_vf.distributed``: which statistics are global);
    each trains on its own batch, with minibatches of ``cfg.minibatch_size / world.size`` episodes.

    Critic warm-up (algorithms with a critic): while ``cfg.critic_warmup_updates`` updates are left,
    an update whose batch shows a value bias (``value/bias``, measured before the update on its
    fresh episodes: held out from everything the critic was fitted to) above the tolerance does not
    trust the critic's advantages: the policy learns from the outcome alone (REINFORCE's advantages
    with ``cfg.baseline``) while the critic fits the batch's returns, so the warm-up costs the policy
    no episodes. The first batch within the tolerance ends the warm-up. The
    tolerance is ``cfg.critic_warmup_bias`` or twice the bias's standard error over the batch's
    episodes (``value/bias_se``), whichever is larger: with noisy returns no critic can show a
    smaller bias on one batch (KeyToDoor with distractor noise: 0.15-0.25 from batch to batch)."""

    def __init__(self, policy, cfg: TrainConfig, device: torch.device, generator: torch.Generator,
                 world: World | None = None):
        self.policy, self.cfg, self.device, self.generator = policy, cfg, device, generator
        self.world = world = world or World()
        if world.fsdp and policy.lora is not None:
            raise ConfigError("--fsdp with --lora-rank: only the adapters train, so their optimizer state is small "
                              "and FSDP would save next to nothing; train LoRA data-parallel (without --fsdp)")
        self.minibatch_size = cfg.minibatch_size // world.size
        self.reference = None
        if cfg.kl_coef > 0 and policy.lora is None:  # with LoRA the reference is the policy with its adapters off
            self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
            self.reference.critic = None  # only its logprobs are read
        self.scorer = world.wrap(Scorer(policy))  # the training forward, behind DDP or sharded by FSDP
        with world.sharded(self.scorer):
            self.optimizer = adam(policy, cfg.lr, critic_lr=cfg.critic_lr)
        policy.weights_stay_put = not world.fsdp
        self.warmup_left = cfg.critic_warmup_updates

    def set_lr(self, update: int, total_updates: int) -> None:
        """The lr for update ``update``; computed from the update index, so resuming is exact."""
        scheduled_lr(self.optimizer, self.cfg.lr_schedule, update, total_updates)

    def state_dict(self) -> dict:
        """Every process calls it (under FSDP the optimizer's state is gathered whole)."""
        return {"optimizer": self.world.optimizer_state(self.optimizer), "warmup_left": self.warmup_left,
                "reference": self.reference.state_dict() if self.reference is not None else None}

    def load_state_dict(self, state: dict) -> None:
        rates = [group["base_lr"] for group in self.optimizer.param_groups]
        self.world.load_optimizer_state(self.optimizer, state["optimizer"])
        for group, rate in zip(self.optimizer.param_groups, rates):  # the config's (--lr on a resume)
            group["base_lr"] = rate
        self.warmup_left = state.get("warmup_left", 0)  # checkpoints from before the adaptive warm-up
        if self.reference is not None and state["reference"] is not None:
            self.reference.load_state_dict(state["reference"])

    def load_policy(self, state: dict) -> None:
        """The policy's parameters from whole tensors (a checkpoint's ``state_dict``)."""
        self.world.load_parameters(self.scorer, {f"policy.{k}": v for k, v in state.items()})

    def policy_state(self) -> dict | None:
        """What ``Policy.save_pretrained`` writes: the policy's whole ``state_dict`` gathered from the
        shards under FSDP (every process calls it), else None (the policy's own)."""
        state = self.world.whole_state(self.scorer)
        return None if state is None else substate(state, "policy.")

    def update(self, batch: RolloutBatch, algo, values: torch.Tensor | None = None) -> Update:
        """One update on ``batch``: ``cfg.epochs`` passes of minibatch steps on ``algo``'s loss.

        ``values``: per-token values from branches (an algorithm that ``uses_branches``)."""
        cfg, policy, world = self.cfg, self.policy, self.world
        mask = batch.action_mask
        lengths = batch.attention_mask.sum(1)
        with torch.no_grad():
            scores_now = self.scores_before_update(len(batch), algo)
            old = score_batch(policy, batch, lengths, self.minibatch_size, cfg.update_tokens) if scores_now else {}
            if values is not None:
                old["values"] = values
            has_values = algo.uses_critic or algo.uses_branches
            # Pooled over every process's episodes, so that the critic warm-up decides (warming_up) as
            # one process would on the same episodes.
            stats = value_stats(old["values"], batch, cfg.gamma, world.sum) if has_values else {}
            ref = self.reference_logprobs(batch, lengths) if cfg.kl_coef > 0 else None
            advantages, returns = algo.advantages(batch, old, cfg, world.sum)
            if self.warming_up(algo, stats):
                advantages = OUTCOME_ONLY.advantages(batch, old, cfg, world.sum)[0]
            if returns is not None:
                stats["value/explained_variance"] = explained_variance(old["values"], returns, mask, world.sum)
            if world.agree(batch.true_deltas is not None):  # (a process whose episodes all lack values sends none)
                stats.update(decision_signal(advantages, batch.true_deltas, world.gather))
            if cfg.normalize_advantages:
                advantages = whiten(advantages, mask, reduce=world.sum)
        # perf/trained_tokens counts a token once per transformer it is trained through: the policy
        # LM and a separate critic.
        models = 1 if policy.critic is None else 2

        totals: dict[str, float] = {}
        steps, tokens = 0, 0
        for epoch in range(cfg.epochs):
            epoch_kl = []
            minibatches = torch.randperm(len(batch), generator=self.generator, device=self.device).split(self.minibatch_size)
            # Each global minibatch's action tokens: one collective per epoch, not one per step.
            step_action_tokens = world.sum(torch.stack([mask[idx].sum() for idx in minibatches]))
            for idx, action_tokens in zip(minibatches, step_action_tokens):
                self.optimizer.zero_grad(set_to_none=True)
                step_terms: dict[str, float] = {}
                # Shares of the global minibatch's action tokens, times the processes that DDP's
                # all-reduce (and World.mean_of for the logged terms) averages over.
                parts_of_step = list(minibatch_parts(lengths, mask, idx, cfg.update_tokens, action_tokens))
                nonfinite = None  # this process's terms of a part whose loss is not finite
                for i, (sl, share) in enumerate(parts_of_step):
                    weight = share * world.size
                    last = i == len(parts_of_step) - 1  # its backward all-reduces what the parts accumulated
                    with contextlib.nullcontext() if last else world.no_sync(self.scorer):
                        loss, terms, parts = self.part_loss(batch, sl, algo, old, ref, advantages, returns)
                        if nonfinite is None and not torch.isfinite(loss):
                            nonfinite = {k: float(v.detach()) for k, v in terms.items()}
                        if steps == 0 and not tokens:  # the first part of an update: what each term pulls with
                            stats.update(grad_norms(parts, [p for p in policy.parameters() if p.requires_grad]))
                        (loss * weight).backward()
                    for k, v in terms.items():
                        step_terms[k] = step_terms.get(k, 0.0) + float(v.detach() * weight)
                    tokens += int(batch.attention_mask[sl].sum()) * models
                # Decided by every process together, before the step: one process stopping alone would
                # leave the others waiting at their next all-reduce.
                if world.agree(nonfinite is not None):
                    raise NonFiniteLoss(nonfinite or {})
                with world.sharded(self.scorer):
                    clip_gradients(policy, cfg.max_grad_norm)
                    self.optimizer.step()
                for k, v in step_terms.items():
                    totals[k] = totals.get(k, 0.0) + v
                epoch_kl.append(step_terms["ppo/approx_kl"])
                steps += 1
            if cfg.target_kl and epoch_kl and world.mean_of({"kl": sum(epoch_kl) / len(epoch_kl)})["kl"] > cfg.target_kl:
                break
        stats.update({k: v / steps for k, v in totals.items()})
        stats["ppo/epochs"] = epoch + 1
        return Update(world.mean_of(stats), tokens)

    def reference_logprobs(self, batch: RolloutBatch, lengths: torch.Tensor) -> torch.Tensor:
        """The KL reference's log-probs of ``batch``: the frozen copy, or the base model under LoRA."""
        chunk, tokens = self.minibatch_size, self.cfg.update_tokens
        if self.reference is not None:
            return score_batch(self.reference, batch, lengths, chunk, tokens)["logprobs"]
        with lora.adapters_off(self.policy.lm):
            return score_batch(self.policy, batch, lengths, chunk, tokens)["logprobs"]

    def warming_up(self, algo, stats: dict) -> bool:
        """Whether this update is a critic warm-up update (see the class docstring: the policy's
        advantages are outcome-only); logs ``critic/warmup`` (1 for a warm-up update) and counts the
        warm-up down."""
        if not algo.uses_critic or self.warmup_left <= 0:
            return False
        warm = abs(stats["value/bias"]) > max(self.cfg.critic_warmup_bias, 2 * stats["value/bias_se"])
        self.warmup_left = self.warmup_left - 1 if warm else 0
        stats["critic/warmup"] = float(warm)
        return warm

    def scores_before_update(self, batch_size: int, algo) -> bool:
        """Whether an update first scores its batch (old log-probs, values). Not for one optimizer step
        without a critic: the policy has not moved since sampling, so the old log-probs are the new
        ones, detached (part_loss); a scoring pass would only repeat them."""
        cfg = self.cfg
        return algo.uses_critic or algo.uses_branches or cfg.epochs > 1 or cfg.minibatch_size < batch_size

    def part_loss(self, batch: RolloutBatch, sl, algo, old: dict, ref: torch.Tensor | None, advantages: torch.Tensor,
                  returns: torch.Tensor | None) -> tuple[torch.Tensor, dict, dict]:
        """The loss on one part ``sl`` of a minibatch, its named terms (loss/*, ppo/* statistics) and
        its parts as they enter the loss (each term times its weight, for ``grad_norms``).

        Every algorithm shares the policy terms (clipped policy gradient, entropy bonus, KL to the
        reference): arms differ only in their advantages and their own terms (``algo.loss_terms``).
        """
        cfg, m = self.cfg, batch.action_mask[sl]
        new = self.scorer(batch.tokens[sl], batch.attention_mask[sl], with_entropy=True, legal=batch.legal(sl), scored=m)
        old_logprobs = old["logprobs"][sl] if "logprobs" in old else new["logprobs"].detach()
        pg, pg_stats = policy_loss(new["logprobs"], old_logprobs, advantages[sl], m, cfg.clip)
        entropy = masked_mean(new["entropy"], m)
        terms = {"loss/pg": pg, "loss/entropy": entropy, **{f"ppo/{k}": v for k, v in pg_stats.items()}}
        parts = {"pg": pg, "entropy": -cfg.ent_coef * entropy}
        for name, (term, coef) in algo.loss_terms(new, old, returns, sl, m, cfg).items():
            terms[name] = term
            parts[name.removeprefix("loss/")] = coef * term
        if ref is not None:
            kl = kl_to_reference(new["logprobs"], ref[sl], m)
            terms["loss/kl"] = kl
            parts["kl"] = cfg.kl_coef * kl
        return sum(parts.values()), terms, parts


def scheduled_lr(optimizer: torch.optim.Optimizer, schedule: str, step: int, steps: int) -> None:
    """Set each parameter group's lr for step ``step`` of ``steps``: its ``base_lr`` (``adam``), constant,
    or decayed linearly to 0 at ``steps`` (``schedule`` "linear")."""
    frac = 1 - step / steps if schedule == "linear" else 1.0
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * frac


def adam(module: torch.nn.Module, lr: float, critic_lr: float | None = None) -> torch.optim.Adam:
    """Adam over ``module``'s parameters; fused (one kernel for every parameter's update, not about
    ten per parameter) on the devices torch fuses it for. With ``critic_lr`` the value function's
    parameters (``Policy.critic_parameters``) are a second group at that rate. Each group keeps its
    rate in ``base_lr`` for the schedule."""
    params = list(module.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    groups = [{"params": params, "base_lr": lr}]
    if critic_lr is not None:
        critic = {id(p) for p in module.critic_parameters()}
        groups = [{"params": [p for p in params if id(p) not in critic], "base_lr": lr},
                  {"params": [p for p in params if id(p) in critic], "base_lr": critic_lr}]
    return torch.optim.Adam([{**g, "lr": g["base_lr"]} for g in groups], lr=lr, fused=fused)


def clip_gradients(policy, max_norm: float) -> None:
    """Clip the gradient norm of each separately trained network on its own (``Policy.parameter_groups``)."""
    for group in policy.parameter_groups():
        torch.nn.utils.clip_grad_norm_(group, max_norm)


def length_buckets(lengths: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
    """``idx`` regrouped by episode length, longest first: a group ends where the next episode is at
    most half as long as the group's longest, so padding a group to its longest at most doubles it."""
    order = idx[torch.argsort(lengths[idx], descending=True, stable=True)]
    sizes = lengths[order].tolist()
    groups, start = [], 0
    for i in range(1, len(sizes) + 1):
        if i == len(sizes) or 2 * sizes[i] <= sizes[start]:
            groups.append(order[start:i])
            start = i
    return groups


def within_budget(lengths: torch.Tensor, group: torch.Tensor, tokens: int) -> tuple[torch.Tensor, ...]:
    """A length group split into parts of at most ``tokens`` padded tokens each (rows x the group's
    longest; one row at least), so memory is bounded by the budget, not by the transcripts' length."""
    rows = max(1, tokens // int(lengths[group].max()))
    return group.split(rows)


def minibatch_parts(lengths: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor, tokens: int,
                    action_tokens: torch.Tensor | None = None):
    """One gradient step over minibatch ``idx``, as parts to accumulate: yields ``(rows, columns)``
    index pairs of length groups (so short episodes are not padded to the longest), each of at most
    ``tokens`` padded tokens, and each part's weight, its share of the minibatch's ``action_tokens``
    (default: those of ``idx``; data-parallel: of every process's minibatch). Summing
    ``weight * masked_mean(loss)`` over the parts gives the gradient of ``masked_mean(loss)`` over
    the whole minibatch."""
    if action_tokens is None:
        action_tokens = mask[idx].sum()
    for group in length_buckets(lengths, idx):
        for part in within_budget(lengths, group, tokens):
            sl = (part, slice(0, int(lengths[part].max())))
            yield sl, mask[sl].sum() / action_tokens


@torch.no_grad()
def score_batch(policy, batch: RolloutBatch, lengths: torch.Tensor, chunk: int, tokens: int) -> dict:
    """``policy.score`` of the batch's action tokens (the other entries are 0), run on length groups of
    at most ``chunk`` episodes and ``tokens`` padded tokens."""
    out: dict[str, torch.Tensor] = {}
    for group in length_buckets(lengths, torch.arange(len(batch), device=lengths.device)):
        for part in (p for g in group.split(chunk) for p in within_budget(lengths, g, tokens)):
            width = int(lengths[part].max())
            sl = (part, slice(0, width))
            scores = policy.score(batch.tokens[sl], batch.attention_mask[sl], legal=batch.legal(sl),
                                  scored=batch.action_mask[sl])
            for key, value in scores.items():
                out.setdefault(key, torch.zeros(batch.tokens.shape, dtype=value.dtype, device=value.device))
                out[key][sl] = value
    return out


def value_stats(values: torch.Tensor, batch: RolloutBatch, gamma: float, reduce=None) -> dict:
    """How the values before an update (a critic's, or Monte-Carlo ones) match the batch's own
    outcomes, the lambda-1 returns-to-go over action tokens: ``value/bias`` (mean V - return: the
    offset explained variance cannot see), its standard error ``value/bias_se`` (over episodes:
    the tokens of one episode share its noise) and ``value/explained_variance_mc``. ``reduce``
    sums over data-parallel processes: the statistics are then those of every process's episodes."""
    mask = batch.action_mask
    returns = returns_to_go(batch.rewards, mask, gamma)
    m = mask.bool()
    errors = values - returns
    per_episode = (errors * mask).sum(1) / mask.sum(1).clamp(min=1)
    (_, bias, var_errors), (episodes, _, var), (_, _, var_returns) = pooled_mean_var(
        [errors[m], per_episode, returns[m]], reduce)
    return {"value/bias": bias, "value/bias_se": math.sqrt(var / episodes) if episodes > 1 else float("inf"),
            "value/explained_variance_mc": variance_explained(var_errors, var_returns)}


def grad_norms(parts: dict[str, torch.Tensor], params: list[torch.nn.Parameter]) -> dict[str, float]:
    """``grad_norm/<term>``: the norm of each loss part's gradient over ``params`` (each part as it
    enters the loss, weight included, so the numbers compare); the graph is kept for the backward."""
    norms = {}
    for name, part in parts.items():
        if part.requires_grad:
            grads = torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)
            norms[f"grad_norm/{name}"] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    return norms


def decision_signal(advantages: torch.Tensor, true_deltas: torch.Tensor | None, gather=None) -> dict[str, float]:
    """``advantage/decision_r2``: for each decision (an episode's k-th turn), the squared correlation over
    the batch's episodes between the advantage of the turn's first action token and the action's TD
    error under the env's exact values (``RolloutBatch.true_deltas``), averaged over the decisions whose
    TD error varies in the batch. It is the share of the advantage's variance that is the decision's own
    signal; the variance argument's speed-up of one arm over another is the ratio of their shares
    (docs/crossover.md). ``gather`` (``World.gather``): over every data-parallel process's episodes."""
    gather = gather or (lambda items: items)
    pooled: dict[int, list[float]] = {}
    for moments in gather([decision_moments(advantages, true_deltas)]):
        for k, m in enumerate(moments):
            pooled[k] = merged_moments(pooled[k], m) if k in pooled else m
    # A variance under 1e-12 is a constant's rounding (its mean need not be exact in float64).
    shares = [c * c / (m2a * m2d) for n, _, _, m2a, m2d, c in pooled.values() if n > 2 and min(m2a, m2d) > 1e-12 * n]
    return {"advantage/decision_r2": sum(shares) / len(shares)} if shares else {}


def decision_moments(advantages: torch.Tensor, true_deltas: torch.Tensor | None) -> list[list[float]]:
    """For each decision k of ``decision_signal``: its count, the means of the advantage and the TD error,
    their sums of squared deviations from the means and the sum of their products' (float64); none
    without ``true_deltas``."""
    if true_deltas is None:
        return []
    known = torch.isfinite(true_deltas)
    turn = known.cumsum(1) - 1  # which decision of its episode each known entry is
    moments = []
    for k in range(int(known.sum(1).max())):
        at = known & (turn == k)
        a, d = advantages[at].double(), true_deltas[at].double()
        da, dd = a - a.mean(), d - d.mean()
        moments.append([float(len(a)), float(a.mean()), float(d.mean()), float((da * da).sum()),
                        float((dd * dd).sum()), float((da * dd).sum())])
    return moments


def merged_moments(x: list[float], y: list[float]) -> list[float]:
    """``decision_moments`` of two disjoint sets of episodes, merged (Chan et al.'s pairwise update)."""
    (n1, a1, d1, aa1, dd1, ad1), (n2, a2, d2, aa2, dd2, ad2) = x, y
    n = n1 + n2
    da, dd, w = a2 - a1, d2 - d1, n1 * n2 / n
    return [n, a1 + da * n2 / n, d1 + dd * n2 / n, aa1 + aa2 + da * da * w, dd1 + dd2 + dd * dd * w,
            ad1 + ad2 + da * dd * w]


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reduce=None) -> float:
    """1 - Var[returns - values] / Var[returns] over action tokens (1 is perfect, <= 0 useless); over
    every data-parallel process's tokens with ``reduce`` (a sum over processes)."""
    m = mask.bool()
    (_, _, var_returns), (_, _, var_errors) = pooled_mean_var([returns[m], returns[m] - values[m]], reduce)
    return variance_explained(var_errors, var_returns)


def variance_explained(var_errors: float, var_returns: float) -> float:
    """``explained_variance`` from the two variances (NaN where the returns do not vary)."""
    return float("nan") if var_returns == 0 else 1 - var_errors / var_returns


def pooled_mean_var(xs: list[torch.Tensor], reduce=None) -> list[tuple[float, float, float]]:
    """The count, mean and unbiased variance of each tensor's entries in ``xs`` (float64); with ``reduce``
    (a sum over data-parallel processes) of every process's entries, in two collectives for all of them
    (the counts and sums, then the squared deviations from the pooled means)."""
    reduce = reduce or (lambda t: t)
    xs = [x.detach().double().flatten() for x in xs]
    counts, sums = reduce(torch.stack([torch.stack([x.new_tensor(float(x.numel())), x.sum()]) for x in xs])).unbind(1)
    means = sums / counts.clamp(min=1)
    squares = reduce(torch.stack([((x - mean) ** 2).sum() for x, mean in zip(xs, means)]))
    return [(n, mean, sq / (n - 1) if n > 1 else float("nan"))
            for n, mean, sq in zip(counts.tolist(), means.tolist(), squares.tolist())]

