"""LoRA (rl_vf.lora): only the adapters and the value head train, the KL reference is the base model
(adapters off, no copy), checkpoints hold the adapters, and resume and reload give the same policy."""
import json

import pytest
import torch

from rl_vf.cli import main
from rl_vf.policy import TinyConfig, load_policy
from rl_vf.trainer import Trainer
from rl_vf.config import make_config

SMALL = TinyConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random tiny Llama saved as a model folder (what a user brings)."""
    folder = tmp_path_factory.mktemp("base")
    import envs  # noqa: F401
    from rl_vf.actor import open_env

    policy, tokenizer = load_policy("tiny", seed=7, tiny=SMALL, alphabet=open_env("TicTacToe-v0", {}).alphabet)
    policy.save_pretrained(str(folder), tokenizer)
    return str(folder)


def args(base, out, episodes):
    return ["train", "--env", "TicTacToe-v0", "--model", base, "--lora-rank", "4", "--algo", "ppo", "--seed", "1",
            "--total-episodes", str(episodes), "--episodes-per-update", "16", "--num-envs", "16", "--minibatch-size", "8",
            "--epochs", "2", "--kl-coef", "0.1", "--lr", "3e-3", "--lr-schedule", "constant", "--eval-every", "0",
            "--final-eval-episodes", "8", "--checkpoint-every", "1", "--wandb", "disabled", "--out", str(out)]


def test_only_adapters_and_value_head_train_and_the_checkpoint_holds_the_adapters(base, tmp_path):
    assert main(args(base, tmp_path / "run", 32)) == 0
    final = tmp_path / "run" / "checkpoints" / "final"
    assert (final / "adapter.safetensors").exists() and not (final / "model.safetensors").exists()
    assert json.loads((final / "lora.json").read_text())["base"] == base
    start, _ = load_policy(base)
    trained, _ = load_policy(str(final))
    assert trained.lora is not None
    before = dict(start.lm.named_parameters())
    for name, param in trained.lm.named_parameters():
        if "lora_" in name:
            continue
        assert torch.equal(param, before[name.replace(".base_layer", "")]), name  # the base is untouched
    assert any(p.abs().sum() > 0 for n, p in trained.lm.named_parameters() if "lora_B" in n)  # B starts at 0
    assert not torch.equal(trained.value_head.weight, start.value_head.weight)


def test_the_kl_reference_is_the_base_model_with_the_adapters_off(base, tmp_path):
    cfg = make_config({"env": "TicTacToe-v0", "model": base, "lora_rank": 4, "kl_coef": 0.1, "episodes_per_update": 8,
                       "num_envs": 8, "minibatch_size": 8, "lr": 3e-2, "seed": 2})
    t = Trainer(cfg, str(tmp_path / "run"))
    assert t.learner.reference is None and t.policy.critic is None  # no copies: shared critic, no frozen twin
    trainable = [n for n, p in t.policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("value_head") for n in trainable)
    _, batch = t.collect_batch()
    t.update(batch)
    lengths = batch.attention_mask.sum(1)
    base_policy, _ = load_policy(base)
    base_policy.allowed_tokens = t.policy.allowed_tokens  # the run's action constraint
    from rl_vf.learner import score_batch

    expected = score_batch(base_policy, batch, lengths, 8, 4096)["logprobs"]
    torch.testing.assert_close(t.learner.reference_logprobs(batch, lengths), expected, atol=1e-5, rtol=1e-5)
    adapted = score_batch(t.policy, batch, lengths, 8, 4096)["logprobs"]
    assert not torch.allclose(adapted, expected, atol=1e-4)  # the adapters moved the policy itself


def test_a_lora_run_resumes_exactly(base, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(args(base, straight, 48)) == 0
    assert main(args(base, split, 16)) == 0
    assert main(["train", "--resume", str(split), "--total-episodes", "48"]) == 0
    a, _ = load_policy(str(straight / "checkpoints" / "final"))
    b, _ = load_policy(str(split / "checkpoints" / "final"))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_lora_needs_a_model_folder_and_a_shared_critic(base, capsys):
    assert main(["train", "--lora-rank", "4", "--total-episodes", "16"]) == 2
    assert "lora_rank needs --model DIR" in capsys.readouterr().err
    assert main(["train", "--model", base, "--lora-rank", "4", "--critic", "separate", "--total-episodes", "16"]) == 2
    assert "takes critic: shared" in capsys.readouterr().err
