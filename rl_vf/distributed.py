"""Data-parallel training on Hugging Face accelerate (DDP across processes, CPU or GPU).

Launched with ``accelerate launch --num_processes N -m rl_vf train ...`` (or ``make train NPROC=N``),
every process plays its own share of each update's episodes (the 1-process run's reset seeds, split
by rank; its own sampling generator) and trains on them; accelerate's DDP wrapper all-reduces the
gradients, so every process takes the same optimizer step and the parameters stay identical.

Statistics the update needs over the whole batch are computed across processes (``World.sum``), so
that N processes with B episodes each take the step one process takes with N x B:
- advantage whitening (mean and variance over every action token);
- REINFORCE's ``mean`` baseline (the batch's mean return); ``rloo`` and ``group`` use an episode's own
  group, and a group never spans processes;
- each minibatch's action-token count, which weights every part's loss (the gradient is that of the
  masked mean over the global minibatch);
- the decisions every process must take alike: the critic warm-up (on the value statistics averaged
  over processes) and the ``target_kl`` early stop.
Only the main process logs, evaluates, runs diagnostics and writes checkpoints; the logged episode
metrics and cost counters are sums over every process.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys

import torch

from rl_vf.config import ConfigError


class World:
    """The processes of a run: ``rank`` of ``size``; one process unless launched with several."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.size = accelerator.num_processes if accelerator else 1

    @classmethod
    def from_launch(cls, device: torch.device) -> "World":
        """The processes a launcher started (``WORLD_SIZE`` > 1: ``accelerate launch``, torchrun), else one.
        A launch that asks for FSDP or DeepSpeed is refused: accelerate would otherwise fall back to DDP
        on CPUs without a word (measured), and rl_vf does not shard yet."""
        for engine, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
            if os.environ.get(variable, "").lower() in ("true", "1", "yes"):
                raise ConfigError(
                    f"this launch asks for {engine} ({variable}={os.environ[variable]}), which rl_vf does not support "
                    f"yet: every process holds the whole model for its rollouts. Launch plain data-parallel (DDP: "
                    f"`accelerate launch --multi_gpu`, or an accelerate config without {engine}); for a model that "
                    f"does not fit, train LoRA adapters (--lora-rank) with --gradient-checkpointing")
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import Accelerator, DistributedDataParallelKwargs

        # Some parameters take no gradient in some arms (the policy's own value head next to a separate
        # critic, or without a critic at all), so DDP must not wait for them.
        return cls(Accelerator(cpu=device.type == "cpu",
                               kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device accelerate gives this process (one GPU each); None with one process."""
        if self.accelerator is None:
            return None
        device = self.accelerator.device
        return torch.device("cpu") if device.type == "cpu" else device  # not "cpu:0": torch.load refuses it

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` behind DDP (its forward all-reduces the gradients in the backward)."""
        return self.accelerator.prepare_model(module) if self.accelerator else module

    def no_sync(self, module: torch.nn.Module):
        """Accumulate gradients locally (the parts of a minibatch before its last)."""
        return self.accelerator.no_sync(module) if self.accelerator else contextlib.nullcontext()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over every process."""
        if self.accelerator is None:
            return tensor
        return self.accelerator.reduce(tensor.clone(), reduction="sum")

    def mean_of(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes that have it (a statistic one batch cannot give,
        e.g. a correlation over decisions that do not vary in it, is missing from that process's)."""
        if self.accelerator is None:
            return values
        keys = sorted(set().union(*self.gather([list(values)])))  # every process sends the same keys
        device = self.accelerator.device
        sums = self.sum(torch.tensor([values.get(k, 0.0) for k in keys], dtype=torch.float64, device=device))
        counts = self.sum(torch.tensor([float(k in values) for k in keys], dtype=torch.float64, device=device))
        return {k: s / c for k, s, c in zip(keys, sums.tolist(), counts.tolist()) if c}

    def gather(self, items: list) -> list:
        """Every process's ``items``, concatenated in rank order (picklable objects)."""
        if self.accelerator is None:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def agree(self, flag: bool) -> bool:
        """True on every process if it is True on any (a stop request seen by one of them)."""
        if self.accelerator is None:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.accelerator.device)) > 0)

    def wait(self) -> None:
        """Every process waits here for the others (the main one writing files they read)."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


class Scorer(torch.nn.Module):
    """``policy.score`` as a module's forward, so that DDP sees the training forward pass (its
    backward is where DDP all-reduces); the rollout engine uses the policy itself."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, *args, **kwargs) -> dict:
        return self.policy.score(*args, **kwargs)


def launch_command(processes: int) -> list[str]:
    """The command line that starts ``python -m rl_vf ...`` as ``processes`` data-parallel processes
    (``accelerate launch``; torchrun underneath, gloo on the CPU), on a free port so that several
    such runs can start side by side; append ``rl_vf``'s arguments."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "rl_vf"]

