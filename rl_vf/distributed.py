"""Training across processes on Hugging Face accelerate (DDP, or sharded by FSDP2; CPU or GPU).

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

FSDP (``--fsdp``, or an accelerate config / ``accelerate launch --use_fsdp``): torch's FSDP2
(``fully_shard``, a unit per transformer layer and one for the rest) shards the parameters, gradients
and Adam's state over the processes. The rollout engine, rl_vf's lean Llama forward and evaluation
read the whole model, so the parameters are gathered whole after every optimizer step and stay whole
until the next one; what FSDP saves is the gradients and the optimizer's two moments, of which each
process keeps 1/N (per fp32 parameter: DDP holds 4 bytes of weights, 4 of gradients, 4 of gradient
buckets and 8 of moments; FSDP the 4 of whole weights and 16/N: shards of weights, gradients and
moments). Gradients are reduce-scattered instead of all-reduced; the update is the same. Checkpoints
hold whole tensors, as a 1-process run's do.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import warnings

import torch

from rl_vf.config import ConfigError


class World:
    """The processes of a run: ``rank`` of ``size``; one process unless launched with several.
    ``fsdp``: the training module is sharded (FSDP2) instead of replicated (DDP)."""

    def __init__(self, accelerator=None, fsdp: bool = False):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.size = accelerator.num_processes if accelerator else 1
        self.fsdp = fsdp and self.size > 1

    @classmethod
    def from_launch(cls, device: torch.device, fsdp: bool = False) -> "World":
        """The processes a launcher started (``WORLD_SIZE`` > 1: ``accelerate launch``, torchrun), else one;
        sharded with ``fsdp`` or when the launch asks for FSDP. DeepSpeed is refused (accelerate would
        fall back to DDP on CPUs without a word: measured), and so are FSDP settings rl_vf cannot honour."""
        if flag("ACCELERATE_USE_DEEPSPEED"):
            raise ConfigError(
                f"this launch asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED={os.environ['ACCELERATE_USE_DEEPSPEED']}), "
                f"which rl_vf does not support. Launch data-parallel (DDP: `accelerate launch --multi_gpu`) or "
                f"sharded with FSDP (`rl-vf train --fsdp`, `accelerate launch --use_fsdp`)")
        fsdp = fsdp or flag("ACCELERATE_USE_FSDP")
        if fsdp and flag("FSDP_OFFLOAD_PARAMS"):
            raise ConfigError("this launch asks FSDP to offload parameters to the CPU (FSDP_OFFLOAD_PARAMS=true), which "
                              "rl_vf does not do: its rollouts read the whole model on the device. Set "
                              "fsdp_offload_params: false in the accelerate config")
        # rl_vf shards the model itself (``wrap``), so accelerate must not: its FSDP wraps each layer,
        # whose forward rl_vf's lean one goes around, and refuses CPUs; and transformers, seeing the
        # switch, would load a checkpoint's weights into the main process alone.
        os.environ.pop("ACCELERATE_USE_FSDP", None)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import Accelerator, DistributedDataParallelKwargs

        # Some parameters take no gradient in some arms (the policy's own value head next to a separate
        # critic, or without a critic at all), so DDP must not wait for them.
        return cls(Accelerator(cpu=device.type == "cpu",
                               kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]), fsdp)

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
        """``module`` behind DDP (its forward all-reduces the gradients in the backward), or sharded by
        FSDP2 (its backward reduce-scatters them). Under FSDP the parameters are the shards until
        ``sharded`` ends: make the optimizer inside it."""
        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # A unit per transformer layer (the classes a Hugging Face model names in _no_split_modules)
            # and one for the rest: the gradients are reduce-scattered a layer at a time, so the buffers
            # that takes are a layer's, not the model's. Whole from one step to the next: the parts of a
            # minibatch are as many as each process's own episodes need, so a gather per part would not
            # pair up across processes.
            mesh = init_device_mesh(self.device.type, (self.size,))
            layers = {name for m in module.modules() for name in getattr(m, "_no_split_modules", None) or ()}
            for sub in [m for m in module.modules() if type(m).__name__ in layers]:
                fully_shard(sub, mesh=mesh, reshard_after_forward=False)
            module = fully_shard(module, mesh=mesh, reshard_after_forward=False)
            module.set_reshard_after_backward(False)  # every unit's
            # FSDP2 warns that the scores are views, whose in-place change would skip the gather before
            # the backward; the learner changes none, and the parameters stay whole through it anyway.
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPScorer\) returned a view tensor")
            return module
        return self.accelerator.prepare_model(module) if self.accelerator else module

    @contextlib.contextmanager
    def sharded(self, module: torch.nn.Module):
        """Under FSDP, ``module``'s parameters are its shards inside (the optimizer's parameters, which
        hold the reduce-scattered gradients: clip and step here) and whole again after, gathered from
        the shards' new values (the rollouts, scoring, evaluation and checkpoints read them); without
        FSDP nothing changes."""
        if not self.fsdp:
            yield
            return
        for unit in units(module):
            unit.reshard()
        yield
        for unit in units(module):
            unit.unshard()

    @contextlib.contextmanager
    def no_sync(self, module: torch.nn.Module):
        """Accumulate gradients locally (the parts of a minibatch before its last)."""
        if self.fsdp:
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)
        else:
            with self.accelerator.no_sync(module) if self.accelerator else contextlib.nullcontext():
                yield

    def load_parameters(self, module: torch.nn.Module, state: dict) -> None:
        """``load_state_dict(state)`` into the module that ``wrap`` returned ``module`` for, from whole
        tensors (a checkpoint's); under FSDP every process keeps its shards of them, and the parameters
        are whole again afterwards."""
        if not self.fsdp:
            (self.accelerator.unwrap_model(module) if self.accelerator else module).load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        with self.sharded(module):
            set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))

    def whole_state(self, module: torch.nn.Module) -> dict | None:
        """Under FSDP, the ``state_dict`` of the module given to ``wrap`` with whole tensors, on the main
        process's CPU (every process calls it: it gathers the shards; FSDP2 swaps the shards in for any
        ``state_dict``, so the parameters are gathered whole again after). None without FSDP: the
        module's own ``state_dict`` is whole."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        for unit in units(module):
            unit.unshard()
        return state

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """``optimizer.state_dict()`` with whole tensors, for the main process to save (every process
        calls it: under FSDP it gathers the shards one tensor at a time, and only the main process
        keeps them, on the CPU; the others' dict holds None in their place)."""
        state = optimizer.state_dict()
        if self.fsdp:
            from torch.distributed.tensor import DTensor

            def whole(tensor: DTensor) -> torch.Tensor | None:
                gathered = tensor.full_tensor()  # a collective: every process takes part
                return gathered.cpu() if self.is_main else None

            state["state"] = {i: {k: whole(v) if isinstance(v, DTensor) else v for k, v in s.items()}
                              for i, s in sorted(state["state"].items())}
        return state

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """``optimizer.load_state_dict`` of ``optimizer_state``'s whole tensors; under FSDP each process
        keeps the rows of each tensor that its shard of the parameter holds."""
        if self.fsdp:
            from torch.distributed.tensor import distribute_tensor

            params = [p for group in optimizer.param_groups for p in group["params"]]

            def own_rows(tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
                if tensor.shape != param.shape:  # Adam's step count
                    return tensor
                return distribute_tensor(tensor.to(param.device), param.device_mesh, param.placements,
                                         src_data_rank=None)

            state = {**state, "state": {i: {k: own_rows(v, params[i]) for k, v in s.items()}
                                        for i, s in state["state"].items()}}
        optimizer.load_state_dict(state)

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


def units(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP units in ``module`` (``World.wrap``'s: each layer's and the root's)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


# What gloo's collectives say when another process of the run is gone (they raise a plain RuntimeError;
# NCCL's raise torch's DistError).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting")


def peer_failed(error: BaseException) -> bool:
    """Whether ``error`` says that another process of the run failed or was killed (a collective lost
    its peer), rather than that this process failed on its own."""
    return isinstance(error, torch.distributed.DistError) or any(s in str(error) for s in PEER_GONE)


def flag(variable: str) -> bool:
    """Whether the launcher switched ``variable`` (accelerate's ``ACCELERATE_USE_...``) on."""
    return os.environ.get(variable, "").lower() in ("true", "1", "yes")


def launch_command(processes: int, fsdp: bool = False) -> list[str]:
    """The command line that starts ``python -m rl_vf ...`` as ``processes`` data-parallel processes
    (``accelerate launch``; torchrun underneath, gloo on the CPU), on a free port so that several
    such runs can start side by side; append ``rl_vf``'s arguments."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp" if fsdp else "--multi_gpu",
            "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "rl_vf"]

