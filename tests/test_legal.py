"""Legal-action decoding: the prefix tree, the packed masks, the engine and the loss that share them."""
import numpy as np
import pytest
import torch

from envs.base import TextEnv, text_space
from rl_vf.config import ConfigError, make_config
from rl_vf.engine import RolloutBatch, RolloutEngine, stop_token_mask
from rl_vf.legal import ActionTrie, LegalActions, LegalDecode, allowed_mask, pack_keys
from rl_vf.policy import TinyConfig, load_policy
from rl_vf.pretrain import demo_episode
from rl_vf.learner import score_batch
from rl_vf.trainer import Trainer

STOP = (8, 9)


def test_trie_allows_the_next_tokens_of_legal_actions_and_stop_after_complete_ones():
    trie = ActionTrie([[1, 2], [1, 2, 3], [4]], STOP)
    assert trie.keys[0] == (1, 4)
    one = trie.next(0, 1)
    assert trie.keys[one] == (2,)
    one_two = trie.next(one, 2)
    assert trie.keys[one_two] == (3, 8, 9)  # "1 2" is complete, and "1 2 3" continues it
    assert trie.keys[trie.next(0, 4)] == STOP
    assert trie.next(trie.next(0, 4), 8) is None  # a stop token ends the action
    assert trie.keys_along([1, 2, 3, 9]) == [(1, 4), (2,), (3, 8, 9), STOP]
    with pytest.raises(ValueError, match="leaves"):
        trie.keys_along([1, 3])
    with pytest.raises(ValueError, match="leaves"):
        trie.keys_along([4, 8, 4])  # nothing may follow the stop token


@pytest.mark.parametrize("seed", range(5))
def test_device_masks_equal_the_tries_keys_along_any_walk(seed):
    """LegalDecode (tensors, no host walk) allows what the tries allow at every step, for rows of
    different action lists, and everything once a row's action has ended."""
    rng = np.random.default_rng(seed)
    vocab = 10
    stop = torch.zeros(vocab, dtype=torch.bool)
    stop[list(STOP)] = True
    tries = []
    for _ in range(6):  # actions of 1-4 tokens from 0-7; some are prefixes of others
        actions = {tuple(rng.integers(0, 8, size=rng.integers(1, 5)).tolist()) for _ in range(rng.integers(1, 7))}
        tries.append(ActionTrie(sorted(actions), STOP))
    legal, nodes = LegalDecode(tries, stop), [0] * len(tries)
    for step in range(6):
        mask = legal.allowed(step)
        tokens = []
        for r, (trie, node) in enumerate(zip(tries, nodes)):
            allowed = set(range(vocab)) if node is None else set(trie.keys[node])
            assert set(mask[r].nonzero().flatten().tolist()) == allowed, (step, r)
            tokens.append(int(rng.choice(sorted(allowed))))
        legal.advance(step, torch.tensor(tokens))
        nodes = [None if node is None else trie.next(node, tok) for trie, node, tok in zip(tries, nodes, tokens)]
    assert all(node is None for node in nodes)  # every walk ended (a stop token) within 5 tokens


def test_packed_keys_give_the_allowed_tokens_at_each_position_and_everything_elsewhere():
    packed = pack_keys([[(1, (0, 2)), (3, (1,))], [], [(0, (0, 2))]], width=4)
    index, ids = packed
    assert index.tolist() == [[0, 1, 0, 2], [0, 0, 0, 0], [1, 0, 0, 0]]
    mask = allowed_mask(index, ids, vocab=3)
    assert mask[0].tolist() == [[True] * 3, [True, False, True], [True] * 3, [False, True, False]]
    assert mask[1].all() and mask[2, 0].tolist() == [True, False, True]
    assert pack_keys([[], []], width=4) is None


class WordsEnv(TextEnv):
    """Each turn lists 1-4 legal words (some prefixes of others, of 1-3 characters); reward 1 for the
    first listed word. Episodes of 1-4 turns: stresses multi-token actions, prefixes and refills."""

    legal_actions_complete = True
    WORDS = ["a", "ab", "abc", "b", "ba", "c", "cab"]

    def __init__(self):
        self.observation_space = text_space("abc>0123456789", 16)
        self.action_space = text_space("abc", 3)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.turns, self.t = int(self.np_random.integers(1, 5)), 0
        return self._draw(), {}

    def _draw(self) -> str:
        k = int(self.np_random.integers(1, 5))
        self.legal = [self.WORDS[i] for i in self.np_random.choice(len(self.WORDS), k, replace=False)]
        return f"{self.t}>"

    def step(self, action):
        invalid = action not in self.legal
        reward = float(action == self.legal[0])
        self.t += 1
        obs = self._draw()
        return obs, reward, self.t >= self.turns, False, {"invalid_action": invalid, "success": reward > 0}

    def legal_actions(self):
        return list(self.legal)

    def expert_action(self, rng):
        return self.legal[0]


@pytest.fixture(scope="module")
def policy_and_tokenizer():
    policy, tok = load_policy("tiny", seed=0, tiny=TinyConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64))
    torch.nn.init.normal_(policy.value_head.weight)
    return policy.eval(), tok


@pytest.mark.parametrize("greedy", [False, True])
def test_engine_samples_only_legal_actions_and_the_loss_scores_the_same_distribution(policy_and_tokenizer, greedy):
    policy, tok = policy_and_tokenizer
    engine = RolloutEngine(policy, tok, WordsEnv, num_envs=7, max_action_tokens=4, legal_only=True)
    episodes = engine.collect(list(range(60)), torch.Generator().manual_seed(0), greedy=greedy)
    assert not any(e.invalid for e in episodes)
    assert {a for e in episodes for a in e.actions} >= {"a", "ab", "b"}  # short and long words, prefixes
    batch = RolloutBatch.from_episodes(episodes, tok.pad_token_id)
    with torch.no_grad():
        full = policy.score(batch.tokens, batch.attention_mask, legal=batch.legal(slice(None)))
        free = policy.score(batch.tokens, batch.attention_mask)
    m = batch.action_mask.bool()
    torch.testing.assert_close(full["logprobs"][m], batch.sample_logprobs[m], atol=1e-5, rtol=0)
    # Renormalising over fewer tokens raises every probability; a lone choice has probability 1.
    assert (full["logprobs"][m] >= free["logprobs"][m] - 1e-6).all()
    assert (full["logprobs"][m] > free["logprobs"][m] + 1e-3).any()
    assert (batch.legal_index[m] > 0).all()  # every action token was sampled from a recorded set
    assert (batch.legal_index[~m] == 0).all()


def test_without_the_constraint_an_untrained_policy_plays_illegal_words(policy_and_tokenizer):
    policy, tok = policy_and_tokenizer
    engine = RolloutEngine(policy, tok, WordsEnv, num_envs=7, max_action_tokens=4)
    episodes = engine.collect(list(range(60)), torch.Generator().manual_seed(0))
    assert sum(e.invalid for e in episodes) > 10
    assert RolloutBatch.from_episodes(episodes, tok.pad_token_id).legal_index is None


def test_demonstrations_keep_the_allowed_set_of_every_action_token(policy_and_tokenizer):
    _, tok = policy_and_tokenizer
    legal = LegalActions(lambda text: tok.encode(text, add_special_tokens=False), stop_token_mask(tok))
    ep = demo_episode(WordsEnv(), 3, np.random.default_rng(0), 1.0, tok, max_action_tokens=4, legal=legal)
    assert len(ep.legal) == sum(ep.action_mask)
    for (position, key), token in zip(ep.legal, [t for t, a in zip(ep.tokens, ep.action_mask) if a]):
        assert token in key and ep.action_mask[position] == 1


def test_legal_decoding_is_refused_for_an_env_that_does_not_list_every_action(tmp_path):
    with pytest.raises(ConfigError, match="Arithmetic-v0 does not"):
        Trainer(make_config({"env": "Arithmetic-v0", "constrain_actions": "legal"}), str(tmp_path))
    with pytest.raises(ConfigError, match="none, charset, legal"):
        make_config({"constrain_actions": "yes"})


def test_run_configs_from_when_constrain_actions_was_a_bool_still_load():
    assert make_config({"constrain_actions": True}).constrain_actions == "charset"
    assert make_config({"constrain_actions": False}).constrain_actions == "none"


def test_connect_four_training_with_legal_decoding_plays_no_illegal_move(tmp_path):
    cfg = make_config({"env": "ConnectFour-v0", "algo": "ppo", "constrain_actions": "legal", "total_episodes": 64,
                       "episodes_per_update": 32, "num_envs": 32, "minibatch_size": 16, "epochs": 1,
                       "eval_every": 0, "final_eval_episodes": 32, "checkpoint_every": 0, "diag_every": 0,
                       "warm_start_demos": 0, "wandb": "disabled", "hidden_size": 32, "intermediate_size": 64,
                       "precision": "fp32"})
    trainer = Trainer(cfg, str(tmp_path))
    _, batch = trainer.collect_batch()
    assert not batch.invalid.any() and batch.legal_index is not None
    old = score_batch(trainer.policy, batch, batch.attention_mask.sum(1), chunk=16, tokens=1 << 20)  # the update's recompute
    m = batch.action_mask.bool()
    torch.testing.assert_close(old["logprobs"][m], batch.sample_logprobs[m], atol=1e-5, rtol=0)
    assert all(np.isfinite(v) for v in trainer.update(batch).stats.values())
