"""Value diagnostics: the metrics on hand-made numbers, Monte-Carlo values against an exact value,
the advantage maps, and the trainer hook and CLI in a tiny run."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from envs.base import TextEnv, text_space
from rl_vf import branches
from rl_vf import diagnostics as dg
from rl_vf.advantages import returns_to_go, turn_starts
from rl_vf.cli import main
from rl_vf.engine import RolloutEngine, action_token_mask
from rl_vf.metrics_log import read_metrics
from rl_vf.policy import TinyConfig, load_policy


def test_auroc_perfect_reversed_ties_and_one_class():
    labels = [0, 0, 1, 1]
    assert dg.auroc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert dg.auroc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
    assert dg.auroc([0.5, 0.5, 0.5, 0.5], labels) == 0.5
    assert dg.auroc([0.1, 0.6, 0.6, 0.9], labels) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert math.isnan(dg.auroc([0.1, 0.2], [1, 1]))


def test_pairwise_rank_accuracy():
    assert dg.pairwise_rank_accuracy([[1, 2, 3]], [[10, 20, 30]]) == (1.0, 3)
    assert dg.pairwise_rank_accuracy([[3, 2, 1]], [[10, 20, 30]]) == (0.0, 3)
    # Target ties are not pairs; a predicted tie is half right; groups are pooled, never crossed.
    assert dg.pairwise_rank_accuracy([[0, 5, 1]], [[1, 1, 2]]) == (0.5, 2)
    assert dg.pairwise_rank_accuracy([[7, 7], [0, 1]], [[0, 1], [0, 1]]) == (0.75, 2)
    accuracy, pairs = dg.pairwise_rank_accuracy([[1, 2]], [[5, 5]])
    assert math.isnan(accuracy) and pairs == 0


def hand_batch():
    """Two episodes: BOS obs | a a | obs | a  and  BOS obs | a | obs | a | obs | a (one-token padding)."""
    mask = torch.tensor([[0, 0, 1, 1, 0, 1, 0], [0, 0, 1, 0, 1, 0, 1]])
    rewards = torch.tensor([[0, 0, 0, 0.5, 0, 1.0, 0], [0, 0, 0, 0, 0, 0, -1.0]])
    values = torch.tensor([[0, 0, 1.0, 9, 0, 2.0, 0], [0, 0, 0.0, 0, -0.5, 0, -3.0]])
    return mask, rewards, values


def test_returns_to_go_and_value_bias_by_turn():
    mask, rewards, values = hand_batch()
    returns = returns_to_go(rewards, mask, gamma=0.5)
    # gamma once per turn: row 0 turn 0 gets 0.5 + 0.5 * 1.0; row 1 turn 0 gets 0.5^2 * -1.
    assert returns.tolist() == [[0, 0, 1.0, 1.0, 0, 1.0, 0], [0, 0, -0.25, 0, -0.5, 0, -1.0]]
    assert turn_starts(mask[0].tolist()) == [2, 5] and turn_starts(mask[1].tolist()) == [2, 4, 6]
    bias = dg.value_bias_by_turn(values, returns, mask)
    # turn 0: (1 - 1) and (0 + 0.25); turn 1: (2 - 1) and (-0.5 + 0.5); turn 2: (-3 + 1) only.
    assert bias == pytest.approx([0.125, 0.5, -2.0])


def test_values_at_fractions():
    mask, _, values = hand_batch()
    at = dg.values_at_fractions(values, mask, (0.1, 0.5, 1.0))
    # Row 0 has action tokens at 2, 3, 5: the 1st, 2nd and 3rd; row 1 at 2, 4, 6 likewise.
    assert at.tolist() == [[1.0, 9.0, 2.0], [0.0, -0.5, -3.0]]
    ten = torch.ones(1, 10, dtype=torch.long)
    assert dg.values_at_fractions(torch.arange(10.0)[None], ten, (0.3, 0.7)).tolist() == [[2.0, 6.0]]


def test_binned_mean_leaves_empty_bins_empty():
    assert dg.binned_mean([0, 2, 2], [1.0, 2.0, 4.0], 4) == [1.0, None, 3.0, None]


@pytest.mark.parametrize("true,critic,expected", [
    ([0, 0, -1, -1, -1], [0.5, 0.4, 0.3, -0.2], 1.0),  # lost at state 2, the critic falls below 0 at 3
    ([0, -1, -1, -1], [0.5, -0.1, -0.5], 0.0),  # noticed at once
    ([0, 0, -1, -1], [0.5, 0.4, 0.3], math.inf),  # never noticed
    ([1, 0, 0, 0], [0.9, 0.1, 0.2], None),  # a drop, but not to the losing value
    ([0, 0, 0, -1], [0.5, 0.4, 0.3], None),  # lost on the last step: the critic reads nothing after it
    ([-1, -1, -1], [-0.5, -0.5], None),  # lost from the start: no mistake to detect
    ([math.nan, math.nan, math.nan], [0.0, 0.0], None),  # the env reports no values
])
def test_detection_delay(true, critic, expected):
    assert dg.detection_delay(true, critic, loss=-1.0, alarm=0.0) == expected


def test_false_alarms_count_states_not_yet_lost():
    # States 0-2 are not lost (the terminal state 3 has no critic reading); the critic is below 0 at 1.
    assert dg.false_alarms([0, 0, 1, -1], [0.5, -0.2, 0.1], loss=-1.0, alarm=0.0) == (1, 3)
    assert dg.false_alarms([0, -1, -1], [-0.5, -0.5], loss=-1.0, alarm=0.0) == (1, 1)
    assert dg.false_alarms([math.nan, math.nan], [-1.0], loss=-1.0, alarm=0.0) == (0, 0)


class CoinPick(TextEnv):
    """Turn 0: any action. Turn 1: reward 1 if the action is "3" and the env's own coin comes up
    heads (probability 1/2), else 0. From turn 1 the policy's value is P(action "3") / 2."""

    def __init__(self):
        self.observation_space = text_space("go:pick", 5)
        self.action_space = text_space("0123456789", 1)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.turn = 0
        return "go:", {}

    def step(self, action):
        self.turn += 1
        if self.turn == 1:
            return "pick:", 0.0, False, False, {"invalid_action": False}
        win = action.strip() == "3" and self.np_random.random() < 0.5
        return "pick:", float(win), True, False, {"invalid_action": False, "success": win}


@pytest.fixture(scope="module")
def digit_policy():
    policy, tok = load_policy("tiny", seed=0, tiny=TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64),
                              alphabet="go:pick0123456789\n")
    policy.allowed_tokens = action_token_mask(tok, "0123456789")
    return policy.eval(), tok


def test_mc_value_matches_the_exact_value(digit_policy):
    policy, tok = digit_policy
    engine = RolloutEngine(policy, tok, CoinPick, num_envs=256, max_action_tokens=1)
    episode = engine.collect([7], torch.Generator().manual_seed(0))[0]
    start = turn_starts(episode.action_mask)[1]
    point = branches.BranchPoint(7, 1, episode.tokens[:start], 0.0, 0.5, branches.replay(CoinPick, episode, 1)[0])
    with torch.no_grad():
        logits = policy(torch.tensor([point.tokens]))[0][0, -1]
    exact = 0.5 * float(torch.softmax(logits, -1)[tok.convert_tokens_to_ids("3")])
    k = 1500
    mc, continuations = branches.mc_state_values(engine, [point], k, 1.0, torch.Generator().manual_seed(1),
                                           np.random.default_rng(2))
    # Clones that shared the coin would all win or all lose after a "3": far outside this band.
    assert abs(mc[0] - exact) < 4 * math.sqrt(exact * (1 - exact) / k), (mc[0], exact)
    assert len(continuations[0]) == k and all(c.tokens[:start] == point.tokens for c in continuations[0])


class DriftingCoin(CoinPick):
    """CoinPick whose second observation shows how many resets came before: a replay from the seed
    never reproduces it, as with an opponent whose randomness the seed does not fix."""

    resets = 0

    def __init__(self):
        super().__init__()
        self.observation_space = text_space("go:pick0123456789", 6)

    def reset(self, seed=None, options=None):
        DriftingCoin.resets += 1
        return super().reset(seed=seed)

    def step(self, action):
        obs, *rest = super().step(action)
        return (obs + str(DriftingCoin.resets % 10) if self.turn == 1 else obs), *rest


def test_states_whose_replay_diverges_are_skipped_and_counted(digit_policy):
    policy, tok = digit_policy
    engine = RolloutEngine(policy, tok, DriftingCoin, num_envs=4, max_action_tokens=1)
    episodes = engine.collect([1, 2, 3, 4], torch.Generator().manual_seed(0))
    cfg = SimpleNamespace(diag_states=4, diag_rollouts=2, diag_actions=2, gamma=1.0)
    rng = np.random.default_rng(0)
    turn = [int(t) for t in np.random.default_rng(0).integers(2, size=4)]  # the turns monte_carlo will pick
    metrics, arrays = dg.monte_carlo(engine, DriftingCoin, episodes, [[0.0, 0.0]] * 4, cfg,
                                     torch.Generator().manual_seed(1), rng)
    assert metrics["value/mc_replay_diverged"] == turn.count(1) > 0  # turn 0's observation does replay
    assert metrics["value/mc_replay_diverged"] + len(arrays.get("states", [])) == 4


def test_advantage_html_has_one_span_per_token_and_png(tmp_path):
    maps = dg.AdvantageMaps(
        titles=["seed 1: <won>", "seed 2"],
        tokens=[["<bos>", "1", "\n", "5"], ["<bos>", "2", "7"]],
        action_mask=[[0, 0, 0, 1], [0, 0, 1]],
        advantages={"ppo": [[0, 0, 0, -0.5], [0, 0, 1.0]], "reinforce": [[0, 0, 0, 2.0], [0, 0, -2.0]]},
    )
    page = dg.advantage_html(maps)
    assert page.count("<span") == 2 * (4 + 3)
    assert "&lt;bos&gt;" in page and "&lt;won&gt;" in page and "<bos>" not in page
    assert page.count("rgba(178,24,43") == 2 and page.count("rgba(33,102,172") == 2  # red < 0 < blue
    dg.advantage_png(maps, str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


SMALL = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "64", "--threads", "1",
         "--wandb", "disabled"]
DIAG = ["--diag-every", "1", "--diag-episodes", "24", "--diag-states", "4", "--diag-rollouts", "3",
        "--diag-actions", "3"]


def tiny_run(out, algo):
    return ["train", "--env", "TicTacToe-v0", "--algo", algo, "--total-episodes", "64", "--episodes-per-update", "32",
            "--num-envs", "32", "--minibatch-size", "32", "--epochs", "1", "--eval-every", "0",
            "--final-eval-episodes", "16", "--out", str(out), *SMALL, *DIAG]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diag") / "ppo"
    assert main(tiny_run(out, "ppo")) == 0
    return out


def test_trainer_hook_writes_maps_arrays_and_metrics(ppo_run):
    rows = read_metrics(ppo_run / "metrics.jsonl")
    names = ("value/heldout_explained_variance", "value/bias_turn0", "value/bias_mean", "value/auroc_mid",
             "value/decisive_mistakes", "value/detect_delay_turns", "value/detect_never_rate", "value/mc_abs_error",
             "value/false_alarm_rate", "value/mc_bias", "value/rank_accuracy", "value/rank_pairs", "perf/diag_s")
    for row in rows:
        assert all(name in row for name in names), set(names) - set(row)
    for update in (1, 2):
        folder = ppo_run / "diagnostics" / f"update_{update:06d}"
        assert (folder / "advantages.png").stat().st_size > 0
        assert (folder / "advantages.html").read_text().count("class='rule'") == 2 * 8  # two rules, 8 episodes
    lines = (ppo_run / "diagnostics" / "diagnostics.jsonl").read_text().splitlines()
    arrays = [json.loads(line) for line in lines]
    assert [a["update"] for a in arrays] == [1, 2]
    assert len(arrays[0]["states"]) == 4 and len(arrays[0]["auroc_by_fraction"]) == 10
    assert arrays[0]["detection"]["loss_value"] == -1.0  # tic-tac-toe reports exact values


def test_no_diagnostics_for_reinforce(tmp_path):
    out = tmp_path / "reinforce"
    assert main(tiny_run(out, "reinforce") + ["--total-episodes", "32"]) == 0
    assert not (out / "diagnostics").exists()
    assert not any(k.startswith("value/") for k in read_metrics(out / "metrics.jsonl")[0])


def test_diagnose_command(ppo_run, tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["diagnose", "--checkpoint", str(ppo_run), "--episodes", "16", "--states", "2", "--rollouts", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["env"] == "TicTacToe-v0" and "value/mc_abs_error" in printed
    saved = json.loads((out / "diagnostics.json").read_text())
    assert len(saved["states"]) == 2 and (out / "advantages.html").exists() and (out / "advantages.png").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--checkpoint", "{tmp}/nothing"], "no checkpoint"),
    (["--checkpoint", "{run}", "--states", "0"], "diag_states must be >= 1"),
    (["--checkpoint", "{run}", "--actions", "1"], "diag_actions must be >= 2"),
    (["--checkpoint", "{run}", "--env", "NoSuchEnv-v0"], "unknown env"),
])
def test_diagnose_bad_input_exits_2(ppo_run, tmp_path, capsys, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(ppo_run)) for a in argv]
    assert main(["diagnose", *argv, "--out", str(tmp_path / "out")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_diagnose_writes_beside_the_checkpoints_not_inside_one(tmp_path):
    from rl_vf.cli import diagnose_dir

    run = tmp_path / "run"
    assert diagnose_dir(str(run / "checkpoints" / "final")) == str(run / "diagnose" / "final")
    assert diagnose_dir(str(run / "checkpoints" / "update_000004") + "/") == str(run / "diagnose" / "update_000004")
    assert diagnose_dir(str(tmp_path / "my_model")) == str(tmp_path / "my_model-diagnose")
