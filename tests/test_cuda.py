"""The GPU path: the engine and the trainer on a CUDA device. Skipped where torch sees no GPU (CI);
run where one is lent (docs/benchmark.md, "Running the benchmark on a GPU")."""
import copy
import json

import pytest
import torch
from test_engine import CountingEnv, assert_matches_recompute, windowed
from test_legal import WordsEnv

from rl_vf.config import make_config
from rl_vf.engine import RolloutBatch, RolloutEngine
from rl_vf.policy import Critic, TinyConfig, load_policy
from rl_vf.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (these check the GPU path)")
CUDA = torch.device("cuda")
SMALL = dict(hidden_size=32, layers=1, heads=2, intermediate_size=64, threads=1, wandb="disabled",
             critic_warmup_updates=0)  # one full update, not a critic-only one


@pytest.fixture(scope="module", params=["shared", "separate"])
def cuda_policy(request):
    policy, tok = load_policy("tiny", seed=0, tiny=TinyConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64))
    torch.nn.init.normal_(policy.value_head.weight, generator=torch.Generator().manual_seed(0))
    if request.param == "separate":
        policy.critic = Critic.copy_of(policy)
        with torch.no_grad():
            for p in policy.critic.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    return policy.to(CUDA).eval(), tok


# The CUDA defaults: sync_every 8, the decode step replayed as a CUDA graph (static_decode None).
@pytest.mark.parametrize("sync_every,static_decode", [(None, None), (1, None), (None, False)])
def test_cached_rollout_on_cuda_matches_full_recompute(cuda_policy, sync_every, static_decode):
    policy, tok = cuda_policy
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=16, max_action_tokens=5, device=CUDA,
                           sync_every=sync_every, static_decode=static_decode)
    assert engine.sync_every == (sync_every or 8) and engine.static_decode == (static_decode is None)
    episodes = engine.collect(range(40), torch.Generator(device=CUDA).manual_seed(1))
    assert [e.seed for e in episodes] == list(range(40))
    assert assert_matches_recompute(policy, tok, episodes, atol=1e-4).sum() > 100
    if engine.static_decode:
        assert any(s.captured for s in engine._static.values())


def test_cuda_graphs_follow_weight_updates_and_windows(cuda_policy):
    """A captured decode step reads the parameters in place: after an in-place update (what the
    optimizer does) the same engine's rollouts still match a recompute; so does a windowed policy."""
    policy, tok = cuda_policy
    policy = copy.deepcopy(policy)
    engine = RolloutEngine(policy, tok, CountingEnv, num_envs=8, max_action_tokens=5, device=CUDA)
    generator = torch.Generator(device=CUDA).manual_seed(2)
    before = engine.collect(range(24), generator)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = engine.collect(range(24), generator)
    assert_matches_recompute(policy, tok, after, atol=1e-4)
    assert [e.logprobs for e in before] != [e.logprobs for e in after]
    window = windowed(policy, 3)
    episodes = RolloutEngine(window, tok, CountingEnv, num_envs=8, max_action_tokens=5, device=CUDA).collect(
        range(24), generator)
    assert_matches_recompute(window, tok, episodes, atol=1e-4)


def test_bf16_rollout_on_cuda_stays_close_to_its_recompute(cuda_policy):
    policy, tok = cuda_policy
    half = copy.deepcopy(policy)
    half.autocast_dtype = torch.bfloat16
    engine = RolloutEngine(half, tok, CountingEnv, num_envs=8, max_action_tokens=4, device=CUDA)
    assert_matches_recompute(half, tok, engine.collect(range(24), torch.Generator(device=CUDA).manual_seed(0)),
                             atol=0.1)


def test_cuda_sampling_is_seeded(cuda_policy):
    policy, tok = cuda_policy

    def play(seed):
        engine = RolloutEngine(policy, tok, CountingEnv, num_envs=8, max_action_tokens=4, device=CUDA)
        return [e.tokens for e in engine.collect(range(20), torch.Generator(device=CUDA).manual_seed(seed))]

    assert play(3) == play(3)
    assert play(3) != play(4)


def test_legal_decoding_on_cuda_plays_only_legal_actions_and_scores_the_same_distribution(cuda_policy):
    """Legal-action masks built on the device (no host walk per token), under CUDA graphs."""
    policy, tok = cuda_policy
    engine = RolloutEngine(policy, tok, WordsEnv, num_envs=7, max_action_tokens=4, device=CUDA, legal_only=True)
    episodes = engine.collect(range(60), torch.Generator(device=CUDA).manual_seed(0))
    assert not any(e.invalid for e in episodes)
    batch = RolloutBatch.from_episodes(episodes, tok.pad_token_id).to(CUDA)
    m = batch.action_mask.bool()
    for only in (None, batch.action_mask):  # every position, and the action tokens' alone (the learner's)
        with torch.no_grad():
            scored = policy.score(batch.tokens, batch.attention_mask, legal=batch.legal(slice(None)), scored=only)
        torch.testing.assert_close(scored["logprobs"][m], batch.sample_logprobs[m], atol=1e-4, rtol=0)


def test_training_on_cuda_defaults_to_bf16_and_learns_a_step(tmp_path):
    cfg = make_config(dict(env="TicTacToe-v0", episodes_per_update=32, num_envs=32, total_episodes=64, **SMALL))
    t = Trainer(cfg, str(tmp_path / "run"))
    assert t.device.type == "cuda" and t.policy.autocast_dtype == torch.bfloat16
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in t.policy.parameters())
    before = [p.detach().clone() for p in t.policy.parameters()]
    _, batch = t.collect_batch()
    stats = t.update(batch).stats
    assert all(torch.isfinite(torch.tensor(stats[k])) for k in ("loss/pg", "loss/vf", "loss/entropy"))
    assert any(not torch.equal(a, b) for a, b in zip(before, t.policy.parameters()))


def test_a_cuda_run_trains_saves_and_evaluates_on_the_cpu(tmp_path, capsys):
    """A whole run on the GPU, then its checkpoint evaluated on the CPU (a GPU-trained policy is
    usable where no GPU is)."""
    from rl_vf.cli import main

    run = tmp_path / "run"
    args = ["--env", "TicTacToe-v0", "--total-episodes", "64", "--episodes-per-update", "32", "--hidden-size", "32",
            "--layers", "1", "--heads", "2", "--intermediate-size", "64", "--wandb", "disabled", "--out", str(run)]
    assert main(["train", "--device", "cuda", "--precision", "fp32", *args]) == 0
    on_gpu = json.loads((run / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--device", "cpu", "--episodes", "1000"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    # The same greedy fp32 policy on the same 1000 eval episodes: only rounding (a near-tie) may differ.
    assert abs(on_cpu["eval/success_rate"] - on_gpu["eval/success_rate"]) <= 0.02


def test_lora_and_gradient_checkpointing_train_a_step_on_cuda(tmp_path):
    """The memory-lean options on the GPU path: LoRA adapters (bf16 autocast, KL reference = adapters
    off) and gradient checkpointing each train a step; only adapters and the value head move."""
    import envs  # noqa: F401
    from rl_vf.actor import open_env

    base = tmp_path / "base"
    policy, tok = load_policy("tiny", tiny=TinyConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64),
                              alphabet=open_env("TicTacToe-v0", {}).alphabet)
    policy.save_pretrained(str(base), tok)
    for extra in ({"model": str(base), "lora_rank": 4, "kl_coef": 0.1}, {"gradient_checkpointing": True}):
        cfg = make_config(dict(env="TicTacToe-v0", episodes_per_update=16, num_envs=16, total_episodes=16,
                               **SMALL, **extra))
        t = Trainer(cfg, str(tmp_path / str(len(extra))))
        before = {n: p.detach().clone() for n, p in t.policy.named_parameters()}
        _, batch = t.collect_batch()
        stats = t.update(batch).stats
        assert all(torch.isfinite(torch.tensor(v)) for k, v in stats.items() if k.startswith("loss/"))
        moved = {n for n, p in t.policy.named_parameters() if not torch.equal(p, before[n])}
        assert moved and ("lora_rank" not in extra or all("lora_" in n or "value_head" in n for n in moved))


def test_no_cuda_graphs_while_fsdp_gathers_the_weights_into_new_memory(cuda_policy):
    """Under FSDP (rl_vf.distributed) the whole weights are gathered anew after every step, into memory
    a captured graph would not read: the engine decodes without graphs then."""
    policy, tok = cuda_policy
    try:
        policy.weights_stay_put = False
        engine = RolloutEngine(policy, tok, CountingEnv, num_envs=4, max_action_tokens=5, device=CUDA)
        assert not engine.static_decode and not engine._static
        episodes = engine.collect(range(8), torch.Generator(device=CUDA).manual_seed(1))
        assert assert_matches_recompute(policy, tok, episodes, atol=1e-4).sum() > 10
    finally:
        policy.weights_stay_put = True
