"""Any Hugging Face causal LM as the policy: tiny random checkpoints of several families, built offline,
roll out with a KV cache that equals a full recompute (and the model's own forward), train with every
algorithm and reload as saved; a sub-word (BPE) tokenizer whose tokens hold a newline and more ends
each action at the newline. (A hub id without network: tests/test_cli.py.)"""
import os

import gymnasium as gym
import pytest
import torch
import transformers as tf
from test_engine import CountingEnv, assert_matches_recompute
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rl_vf.cli import main
from rl_vf.engine import RolloutBatch, RolloutEngine
from rl_vf.policy import Critic, Policy, load_policy
from rl_vf.tokenizer import char_tokenizer

# Gemma2's and Mistral's sliding windows see 8 tokens, far fewer than a transcript: rl_vf must count a
# window in each row's own tokens, not in the engine's cache columns (which hold padding and old episodes).
SLIDING = 8
FAMILIES = ["gpt2", "llama", "qwen2", "gemma2", "mistral"]


def tiny_lm(family: str, tokenizer) -> tf.PreTrainedModel:
    """A randomly initialised causal LM of ``family`` (hidden 32, 2 layers) over ``tokenizer``'s vocabulary."""
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    small = dict(ids, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512)
    configs = {
        "gpt2": lambda: tf.GPT2Config(**ids, n_embd=32, n_layer=2, n_head=4, n_positions=512),
        "llama": lambda: tf.LlamaConfig(**small),
        "qwen2": lambda: tf.Qwen2Config(**small),
        # A different attention: alternating sliding-window layers, logit soft-capping, its own head size.
        "gemma2": lambda: tf.Gemma2Config(**small, head_dim=8, sliding_window=SLIDING),
        "mistral": lambda: tf.MistralConfig(**small, sliding_window=SLIDING),  # a window on every layer
    }
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(configs[family]())


def save_checkpoint(folder, family: str, tokenizer) -> str:
    Policy(tiny_lm(family, tokenizer)).save_pretrained(str(folder), tokenizer)
    return str(folder)


def train(folder: str, algo: str, out) -> int:
    """A few updates of ``algo`` on a short KeyToDoor through the CLI."""
    return main(["train", "--env", "KeyToDoor-v0", "--env-kwargs", '{"delay": 2}', "--model", folder, "--algo", algo,
                 "--total-episodes", "16", "--episodes-per-update", "8", "--num-envs", "8", "--vine-rollouts", "2",
                 "--final-eval-episodes", "4", "--eval-every", "0", "--threads", "1", "--wandb", "disabled",
                 "--out", str(out)])


@pytest.fixture(scope="module", params=FAMILIES)
def family_folder(request, tmp_path_factory):
    # The project's character tokenizer: printable ASCII, every env's characters (and CountingEnv's).
    return request.param, save_checkpoint(tmp_path_factory.mktemp(request.param), request.param, char_tokenizer())


# static_decode: the fixed-shape decode step a GPU replays as a CUDA graph (eager here), which builds its own masks.
@pytest.mark.parametrize("static_decode", [False, True])
def test_each_family_rolls_out_with_a_cache_that_matches_a_full_recompute(family_folder, static_decode):
    _, folder = family_folder
    policy, tokenizer = load_policy(folder)
    # A separate critic with weights of its own, so its cache and (non-zero) values are checked too.
    policy.critic = Critic.copy_of(policy)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.critic.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=noise))
    policy.eval()
    engine = RolloutEngine(policy, tokenizer, CountingEnv, num_envs=4, max_action_tokens=3, static_decode=static_decode)
    episodes = engine.collect(range(30), torch.Generator().manual_seed(0))
    assert assert_matches_recompute(policy, tokenizer, episodes, atol=1e-4).sum() > 100
    assert max(len(e.tokens) for e in episodes) > 4 * SLIDING
    # The recompute is the model's own function: Hugging Face's forward of each unpadded transcript.
    batch = RolloutBatch.from_episodes(episodes, tokenizer.pad_token_id)
    with torch.no_grad():
        scored = policy.score(batch.tokens, batch.attention_mask)["logprobs"]
        for row, e in enumerate(episodes[:8]):
            ids = torch.tensor([e.tokens])
            own = torch.log_softmax(policy.lm(ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
            torch.testing.assert_close(scored[row, 1:len(e.tokens)], own, atol=1e-4, rtol=0)


@pytest.mark.parametrize("algo", ["ppo", "reinforce", "vine"])
def test_each_family_trains_saves_and_reloads(family_folder, algo, tmp_path, monkeypatch):
    _, folder = family_folder
    saved = {}  # each checkpoint's parameters as the trainer held them when it saved
    save = Policy.save_pretrained

    def recording_save(policy, path, tokenizer=None, state=None):
        saved[os.path.basename(path)] = {k: v.clone() for k, v in policy.state_dict().items()}
        save(policy, path, tokenizer, state)

    monkeypatch.setattr(Policy, "save_pretrained", recording_save)
    assert train(folder, algo, tmp_path / "run") == 0
    final, _ = load_policy(str(tmp_path / "run" / "checkpoints" / "final"))
    reloaded = final.state_dict()
    assert reloaded.keys() == saved["final"].keys()  # value head and any critic included
    assert all(torch.equal(reloaded[k], v) for k, v in saved["final"].items())
    start = load_policy(folder)[0].lm.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in final.lm.state_dict().items())  # it trained


# ---- sub-word tokenizers ---------------------------------------------------------------------------
class RecordingEnv(gym.Env):
    """Two turns; records the action texts it receives."""

    received: list[str] = []

    def __init__(self):
        self.observation_space = gym.spaces.Text(16)
        self.action_space = gym.spaces.Text(8)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return "q:", {}

    def step(self, action):
        RecordingEnv.received.append(action)
        self.t += 1
        return "q:", 0.0, self.t >= 2, False, {"invalid_action": False}


def bpe_with_merges_across_newlines() -> tf.PreTrainedTokenizerFast:
    """A byte-level BPE trained on lines like "3\\nx": its merges cross the newline."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([f"q:{c}3\nx" for c in "abcdefghij"] * 20, trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def test_a_token_that_holds_the_newline_and_more_ends_the_action_at_the_newline():
    tokenizer = bpe_with_merges_across_newlines()
    crossing = [i for i in range(len(tokenizer)) if tokenizer.decode([i]) == "3\nx"]
    assert crossing, "the BPE should have merged '3\\nx' into one token"
    policy = Policy(tiny_lm("gpt2", tokenizer)).eval()
    policy.allowed_tokens = torch.zeros(len(tokenizer), dtype=torch.bool)
    policy.allowed_tokens[crossing[0]] = True  # the only token the policy may sample
    RecordingEnv.received = []
    engine = RolloutEngine(policy, tokenizer, RecordingEnv, num_envs=2, max_action_tokens=4)
    episodes = engine.collect([0, 1, 2], torch.Generator().manual_seed(0))
    assert RecordingEnv.received == ["3"] * 6  # the text before the newline, never the "x..." after it
    for e in episodes:
        actions = [t for t, m in zip(e.tokens, e.action_mask) if m]
        assert actions == [crossing[0]] * 2  # one scored token per turn: the sampled one, nothing after
    mask = assert_matches_recompute(policy, tokenizer, episodes)
    assert int(mask.sum()) == 6


def test_a_bpe_model_trains_saves_and_reloads(tmp_path):
    folder = save_checkpoint(tmp_path / "bpe", "gpt2", bpe_with_merges_across_newlines())
    assert train(folder, "ppo", tmp_path / "run") == 0
    _, tokenizer = load_policy(str(tmp_path / "run" / "checkpoints" / "final"))
    assert "3\nx" in tokenizer.batch_decode([[i] for i in range(len(tokenizer))])  # the BPE came back with it
