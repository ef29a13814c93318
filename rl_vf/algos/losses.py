"""Named loss terms shared by PPO and REINFORCE; every input is (B, T), masked to action tokens."""
from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, reduce=None) -> torch.Tensor:
    """Zero-mean, unit-variance over the masked entries; zero elsewhere. ``reduce`` sums a tensor over
    data-parallel processes, so the mean and variance are those of every process's entries."""
    reduce = reduce or (lambda t: t)
    m = mask.to(x.dtype)
    count = reduce(m.sum()).clamp(min=1.0)
    mean = reduce((x * m).sum()) / count
    var = reduce(((x - mean) ** 2 * m).sum()) / count
    return (x - mean) * torch.rsqrt(var + eps) * m


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate ``pg_loss`` plus its debug statistics ``clipfrac`` and ``approx_kl``.

    On the first pass over fresh data the ratio is 1, so the gradient is the plain policy
    gradient ``-A * grad log pi``: single-epoch REINFORCE uses this same function.
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    pg_loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip).float(), mask),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),  # k3 estimator, >= 0
        }
    return pg_loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> torch.Tensor:
    """``vf_loss``: 0.5 * squared error to the returns, optionally clipped around the old values."""
    err = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.maximum(err, (clipped - returns) ** 2)
    return 0.5 * masked_mean(err, mask)


def kl_to_reference(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``kl``: k3 estimate of KL(pi || pi_ref) on the sampled tokens (unbiased, non-negative)."""
    log_ratio = ref_logprobs - logprobs
    return masked_mean(log_ratio.exp() - 1.0 - log_ratio, mask)
