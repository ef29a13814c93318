"""LoRA adapters (peft) on a policy's LM: the base weights stay frozen, and only the adapters and the
value head train. The KL reference is the same model with its adapters switched off (no second
copy), and a checkpoint holds the adapters (``adapter.safetensors``) and names its base model folder
(``lora.json``), from which ``load_policy`` rebuilds it."""
from __future__ import annotations

import contextlib
import json
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_FILE, LORA_FILE = "adapter.safetensors", "lora.json"


def add_adapters(lm: nn.Module, rank: int, alpha: float, seed: int = 0) -> None:
    """Put rank-``rank`` adapters on every linear layer of ``lm``'s transformer (not its output head),
    in place, initialised from ``seed`` (B at zero, so the model is unchanged), and freeze the rest."""
    from peft import LoraConfig, inject_adapter_in_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear"), lm)
    for name, param in lm.named_parameters():
        param.requires_grad = "lora_" in name


def adapter_layers(module: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_off(module: nn.Module):
    """``module`` as its base model: every adapter switched off inside the block."""
    layers = adapter_layers(module)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def save(state: dict, path: str, base: str, rank: int, alpha: float) -> None:
    """The adapters' weights out of the LM's ``state`` and what rebuilds the model around them: the
    base folder, rank and alpha."""
    save_file({k: v.contiguous() for k, v in state.items() if "lora_" in k}, os.path.join(path, ADAPTER_FILE))
    with open(os.path.join(path, LORA_FILE), "w") as f:
        json.dump({"base": base, "rank": rank, "alpha": alpha}, f, indent=2)


def saved(path: str) -> dict | None:
    """The ``lora.json`` of checkpoint folder ``path`` (None: not a LoRA checkpoint)."""
    file = os.path.join(path, LORA_FILE)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return json.load(f)


def load(lm: nn.Module, path: str, spec: dict) -> None:
    """Add the adapters of checkpoint ``path`` (its ``lora.json``: ``spec``) to ``lm``, the base model."""
    add_adapters(lm, spec["rank"], spec["alpha"])
    missing = lm.load_state_dict(load_file(os.path.join(path, ADAPTER_FILE)), strict=False).missing_keys
    lost = [k for k in missing if "lora_" in k]
    if lost:
        raise ValueError(f"{os.path.join(path, ADAPTER_FILE)} lacks adapter weights, e.g. {lost[0]}")
