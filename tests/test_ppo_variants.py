"""The PPO variants: separate critic, decoupled GAE (lam_critic) and critic warm-up."""
from types import SimpleNamespace

import pytest
import torch

from rl_vf.algos import ALGOS
from rl_vf.algos.losses import policy_loss, value_loss
from rl_vf.cli import main
from rl_vf.compare import make_comparison
from rl_vf.config import ConfigError, make_config
from rl_vf.engine import RolloutEngine
from rl_vf.policy import CRITIC_DIR, Critic, TinyConfig, load_policy
from rl_vf.actor import open_env, policy_for_env
from rl_vf.trainer import Trainer
from tests.test_cli import comparable, ttt_args

# fp32 also on a GPU (where auto means bf16): these compare two computations to 1e-5.
SMALL = dict(hidden_size=32, layers=1, heads=2, intermediate_size=64, threads=1, wandb="disabled", precision="fp32")


# ---- decoupled GAE -------------------------------------------------------------------------------
def hand_batch():
    """One episode: obs | act act | obs | act, reward 0.5 after turn 1 and 1 after turn 2.

    Values at the action tokens are 0.5, 0.2 and 0.1; with gamma 1 the TD errors are
    -0.3 (0 + 0.2 - 0.5), 0.4 (0.5 + 0.1 - 0.2) and 0.9 (1 - 0.1).
    lam 0 (per turn: the first turn's tokens still chain with lambda 1): advantages = [0.1, 0.4, 0.9],
    returns = [0.6, 0.6, 1.0]; lam 1: advantages = [1.0, 1.3, 0.9], returns = the return-to-go
    [1.5, 1.5, 1.0].
    """
    batch = SimpleNamespace(
        rewards=torch.tensor([[0.0, 0.0, 0.5, 0.0, 1.0]]),
        action_mask=torch.tensor([[0, 1, 1, 0, 1]]),
        attention_mask=torch.ones(1, 5, dtype=torch.long),
        truncated=torch.tensor([False]),
    )
    values = torch.tensor([[0.0, 0.5, 0.2, 0.0, 0.1]])
    return batch, {"values": values, "next_value": torch.zeros(1, 5)}


@pytest.mark.parametrize("lam,lam_critic,advantages,returns", [
    (0.0, 1.0, [0.1, 0.4, 0.9], [1.5, 1.5, 1.0]),
    (1.0, 0.0, [1.0, 1.3, 0.9], [0.6, 0.6, 1.0]),
    (0.0, None, [0.1, 0.4, 0.9], [0.6, 0.6, 1.0]),  # None: the value targets use lam
    (1.0, None, [1.0, 1.3, 0.9], [1.5, 1.5, 1.0]),
])
def test_decoupled_gae_by_hand(lam, lam_critic, advantages, returns):
    batch, old = hand_batch()
    adv, ret = ALGOS["ppo"].advantages(batch, old, SimpleNamespace(gamma=1.0, lam=lam, lam_critic=lam_critic))
    actions = batch.action_mask.bool()
    torch.testing.assert_close(adv[actions], torch.tensor(advantages))
    torch.testing.assert_close(ret[actions], torch.tensor(returns))


# ---- the update ----------------------------------------------------------------------------------
def trainer_with_batch(tmp_path, **overrides):
    """A trainer (no critic warm-up unless asked for) and one collected batch."""
    cfg = make_config({"env": "TicTacToe-v0", "algo": "ppo", "episodes_per_update": 16, "num_envs": 16, "minibatch_size": 8,
                       "epochs": 2, "seed": 1, **SMALL, "critic_warmup_updates": 0, **overrides})
    t = Trainer(cfg, str(tmp_path))
    _, batch = t.collect_batch()
    return t, batch


def params(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_lam_critic_equal_to_lam_is_the_coupled_update(tmp_path):
    after = {}
    for lam_critic in (None, 0.95, 1.0):
        t, batch = trainer_with_batch(tmp_path / str(lam_critic), lam=0.95, lam_critic=lam_critic)
        t.update(batch)
        after[lam_critic] = params(t.policy)
    assert same(after[None], after[0.95])
    assert not same(after[None], after[1.0])  # different value targets, a different step


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_critic_warmup_trains_the_policy_on_outcome_only_advantages(tmp_path, critic):
    # A tolerance of 0: no batch is ever within it, so both warm-up updates happen (the cap). Each
    # moves the policy exactly as a REINFORCE update on the same batch would, and fits the critic.
    t, batch = trainer_with_batch(tmp_path / "ppo", critic=critic, critic_warmup_updates=2, critic_warmup_bias=0.0)
    ref, ref_batch = trainer_with_batch(tmp_path / "reinforce", algo="reinforce")
    assert torch.equal(batch.tokens, ref_batch.tokens)
    value_function = t.policy.value_head if critic == "shared" else t.policy.critic
    value_start = params(value_function)
    for _ in range(2):
        warm = t.update(batch)
        ref.update(ref_batch)
        t.update_idx += 1
        ref.update_idx += 1
        assert warm.stats["critic/warmup"] == 1.0 and "loss/vf" in warm.stats and "loss/pg" in warm.stats
        if critic == "separate":  # on a shared trunk the value loss moves the trunk too
            for k, v in params(ref.policy.lm).items():
                torch.testing.assert_close(params(t.policy.lm)[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert not same(params(value_function), value_start)
    before = params(t.policy.lm)
    full = t.update(batch)
    assert "critic/warmup" not in full.stats  # the cap is spent: no more warm-up
    ref.update(ref_batch)
    assert not same(params(t.policy.lm), params(ref.policy.lm)) and not same(params(t.policy.lm), before)


def test_critic_warmup_ends_once_the_bias_is_within_the_tolerance(tmp_path):
    t, batch = trainer_with_batch(tmp_path, critic_warmup_updates=5, critic_warmup_bias=1e9)
    start = params(t.policy.lm)
    result = t.update(batch)
    assert result.stats["critic/warmup"] == 0.0 and "loss/pg" in result.stats and not same(params(t.policy.lm), start)
    assert t.learner.warmup_left == 0


def test_bias_measures_values_against_the_lambda_one_return(tmp_path):
    from rl_vf.learner import value_stats

    batch, old = hand_batch()  # return-to-go at the action tokens: 1.5, 1.5, 1.0; V: 0.5, 0.2, 0.1
    stats = value_stats(old["values"], batch, gamma=1.0)
    assert stats["value/bias"] == pytest.approx(((0.5 - 1.5) + (0.2 - 1.5) + (0.1 - 1.0)) / 3)
    shifted = value_stats(old["values"] + 0.25 * batch.action_mask, batch, gamma=1.0)
    assert shifted["value/bias"] == pytest.approx(stats["value/bias"] + 0.25)  # an offset shows in the bias,
    assert shifted["value/explained_variance_mc"] == pytest.approx(stats["value/explained_variance_mc"])  # not here
    # Its standard error is over episodes: per-episode mean errors -1.0667 and -0.5667 -> sd 0.3536 / sqrt(2).
    two = SimpleNamespace(rewards=batch.rewards.repeat(2, 1), action_mask=batch.action_mask.repeat(2, 1))
    values = torch.cat([old["values"], old["values"] + 0.5 * batch.action_mask])
    assert value_stats(values, two, gamma=1.0)["value/bias_se"] == pytest.approx(0.25, abs=1e-4)


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_critic_lr_is_a_second_parameter_group(tmp_path, critic):
    t, _ = trainer_with_batch(tmp_path, critic=critic, lr=1e-3, critic_lr=5e-3)
    policy_group, critic_group = t.learner.optimizer.param_groups
    assert (policy_group["lr"], critic_group["lr"]) == (1e-3, 5e-3)
    assert {id(p) for p in critic_group["params"]} == {id(p) for p in t.policy.critic_parameters()}
    assert len(policy_group["params"]) + len(critic_group["params"]) == len(list(t.policy.parameters()))
    t.learner.set_lr(1, 4)  # the linear schedule scales both
    assert [g["lr"] for g in t.learner.optimizer.param_groups] == pytest.approx([0.75e-3, 3.75e-3])


def test_grad_norms_of_each_loss_term(tmp_path):
    t, batch = trainer_with_batch(tmp_path)
    stats = t.update(batch).stats
    assert {"grad_norm/pg", "grad_norm/entropy", "grad_norm/vf"} <= set(stats)
    assert all(stats[k] > 0 for k in ("grad_norm/pg", "grad_norm/vf"))
    reinforce, rbatch = trainer_with_batch(tmp_path / "r", algo="reinforce")
    assert "grad_norm/vf" not in reinforce.update(rbatch).stats


# ---- the separate critic -------------------------------------------------------------------------
@pytest.fixture
def policy_with_critic():
    policy, tok = load_policy("tiny", seed=0, tiny=TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64))
    policy.critic = Critic.copy_of(policy)
    with torch.no_grad():  # non-zero value heads, and a critic unlike the policy's own head
        torch.nn.init.normal_(policy.critic.value_head.weight, generator=torch.Generator().manual_seed(1))
        torch.nn.init.normal_(policy.value_head.weight, generator=torch.Generator().manual_seed(2))
    return policy, tok


def transcripts(tok):
    rows = [tok.encode(text, add_special_tokens=False) for text in ("123\n5\n456\n7\n", "789\n1\n")]
    width = max(map(len, rows))
    tokens = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return tokens, attention, attention.clone()  # every real token counts as an action here


def grads(module) -> list:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_separate_critic_gets_only_the_value_loss(policy_with_critic):
    policy, tok = policy_with_critic
    tokens, attention, mask = transcripts(tok)
    out = policy.score(tokens, attention)
    critic_values = policy.critic(tokens, attention_mask=attention)
    torch.testing.assert_close(out["next_value"], critic_values)  # the critic's values, not the LM's head
    value_loss(out["values"], out["values"].detach(), torch.ones_like(mask, dtype=torch.float), mask, None).backward()
    assert grads(policy.critic) and not grads(policy.lm) and not grads(policy.value_head)

    policy.zero_grad(set_to_none=True)
    out = policy.score(tokens, attention)
    advantages = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    policy_loss(out["logprobs"], out["logprobs"].detach(), advantages, mask, 0.2)[0].backward()
    assert grads(policy.lm) and not grads(policy.critic)


def test_separate_critic_checkpoint_round_trip(tmp_path, policy_with_critic):
    policy, tok = policy_with_critic
    policy.save_pretrained(str(tmp_path), tok)
    assert (tmp_path / CRITIC_DIR / "config.json").exists()
    assert (tmp_path / CRITIC_DIR / "value_head.safetensors").exists()
    loaded, _ = load_policy(str(tmp_path))
    assert loaded.critic is not None and same(params(loaded), params(policy))
    tokens, attention, _ = transcripts(tok)
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(tokens, attention)["values"], policy.score(tokens, attention)["values"])
    # The run's config decides: a shared value head leaves a saved critic out.
    env = open_env("TicTacToe-v0", {})
    shared, _ = policy_for_env(str(tmp_path), make_config({"critic": "shared"}), env)
    separate, _ = policy_for_env(str(tmp_path), make_config({"critic": "separate"}), env)
    assert shared.critic is None and same(params(separate.critic), params(policy.critic))


def test_separate_critic_resume_is_exact(tmp_path):
    """4 updates straight, or 2 then a resume: the same metrics and weights, critic included; the
    resume lands inside the 3-update critic warm-up."""
    variant = ["--critic", "separate", "--lam-critic", "1.0", "--critic-warmup-updates", "3"]
    assert main(ttt_args(tmp_path / "straight", 128) + variant) == 0
    assert main(ttt_args(tmp_path / "split", 64) + variant) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--total-episodes", "128"]) == 0
    straight, split = comparable(tmp_path / "straight"), comparable(tmp_path / "split")
    assert len(straight) == 4 and split == straight
    assert [row.get("critic/warmup") for row in straight] == [1.0, 1.0, 1.0, None]
    a, _ = load_policy(str(tmp_path / "straight" / "checkpoints" / "final"))
    b, _ = load_policy(str(tmp_path / "split" / "checkpoints" / "final"))
    assert a.critic is not None and same(params(a), params(b))


# ---- config, CLI and compare ---------------------------------------------------------------------
def test_variant_config_and_names(tmp_path, capsys):
    assert make_config({}).lam_critic == 1.0
    assert make_config({"lam_critic": "none"}).lam_critic is None
    assert make_config({"lam_critic": None}).lam_critic is None  # config.yaml writes null
    assert make_config({"lam_critic": "1"}).lam_critic == 1.0
    for bad, needle in [({"critic": "both"}, "unknown critic 'both'"), ({"lam_critic": 1.5}, "lam_critic"),
                        ({"critic_warmup_updates": -1}, "critic_warmup_updates"),
                        ({"algo": "reinforce", "critic": "separate"}, "needs a learned value function"),
                        ({"algo": "vine", "critic": "separate"}, "needs a learned value function"),
                        ({"critic_lr": 0}, "critic_lr"), ({"vine_rollouts": 0}, "vine_rollouts")]:
        with pytest.raises(ConfigError, match=needle):
            make_config(bad)
    text = "ppo,critic=separate,lam_critic=1.0,critic_warmup_updates=5"
    comp = make_comparison(str(tmp_path), "TicTacToe-v0", {}, [text, "ppo"], seeds=1)
    variant = comp.variants[0]
    assert variant.name == text and variant.folder == "ppo_critic=separate_lam_critic=1.0_critic_warmup_updates=5"
    run = make_config(comp.run_config(variant, 0))
    assert (run.critic, run.lam_critic, run.critic_warmup_updates) == ("separate", 1.0, 5)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert all(f in help_text for f in ("--critic ", "--lam-critic", "--critic-warmup-updates"))


def test_rollouts_without_values_skip_the_separate_critic_and_sample_the_same(tmp_path):
    t, _ = trainer_with_batch(tmp_path, critic="separate")
    torch.nn.init.normal_(t.policy.critic.value_head.weight)  # zero at init: make its values show
    calls = []
    hook = t.policy.critic.register_forward_hook(lambda *_: calls.append(1))
    seeds = t.actor.episode_seeds(t.update_idx)
    cheap = t.actor.engine.collect(seeds, torch.Generator(t.device).manual_seed(5))  # the trainer's engine: values=False
    assert calls == [] and all(v == 0.0 for e in cheap for v in e.values)
    full = RolloutEngine(t.policy, t.tokenizer, t.actor.env.make, 16, t.max_action_tokens)  # values, as diagnostics
    valued = full.collect(seeds, torch.Generator(t.device).manual_seed(5))
    assert calls and any(v != 0.0 for e in valued for v in e.values)
    assert [e.tokens for e in cheap] == [e.tokens for e in valued]
    assert [e.logprobs for e in cheap] == [e.logprobs for e in valued]
    hook.remove()
