"""Per-input levers: blend of context and global rankings, context statistics in the
observation, per-input budgets with a price on sparsity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning.allocation import Profile, allocate, ranks_of
from pruning.prunable_llm import PrunableLLM
from rl.env import ActionMap
from rl.levers import (
    LeverBandit,
    action_dim,
    blend_orderings,
    context_features,
    global_ordering,
    split_actions,
)
from rl.reward import LogPerplexityRatioReward
from scoring.tasks import WindowTask
from tests.fixtures import tiny_llama

N_LAYERS, D_FF, SEQ = 3, 64, 8


@pytest.fixture(scope="module")
def llm() -> PrunableLLM:
    gen = torch.Generator().manual_seed(3)
    order = torch.stack([torch.randperm(D_FF, generator=gen) for _ in range(N_LAYERS)])
    return PrunableLLM(tiny_llama(num_hidden_layers=N_LAYERS, intermediate_size=D_FF), order)


def test_blend_ends_are_the_two_rankings(llm: PrunableLLM) -> None:
    glob = global_ordering(llm)
    assert torch.equal(glob, llm.permutation)
    ranks = ranks_of(glob)
    ctx = torch.stack([torch.randperm(D_FF) for _ in range(N_LAYERS)]).to(torch.int16)
    assert torch.equal(blend_orderings(ctx, ranks, np.zeros(N_LAYERS)).long(), ctx.long())
    assert torch.equal(blend_orderings(ctx, ranks, np.ones(N_LAYERS)).long(), glob.long())
    mixed = blend_orderings(ctx, ranks, np.array([0.0, 1.0, 0.5]))
    assert torch.equal(mixed[0].long(), ctx[0].long()) and torch.equal(mixed[1], glob[1].short())
    assert sorted(mixed[2].tolist()) == list(range(D_FF))  # still a permutation
    assert blend_orderings(None, ranks, np.zeros(N_LAYERS)) is None  # no context: global order


def test_context_features(llm: PrunableLLM) -> None:
    glob = global_ordering(llm)
    ranks = ranks_of(glob)
    same = context_features(glob, ranks, (0.1, 0.5))
    assert same.shape == (2 * N_LAYERS + 1,) and same.tolist() == [1.0] * 6 + [0.0]
    reverse = context_features(glob.flip(-1), ranks, (0.1, 0.5))
    assert reverse[:3].tolist() == [0.0] * 3 and reverse[3:6].tolist() == [0.0] * 3
    assert context_features(None, ranks, (0.1, 0.5)).tolist() == [0.0] * 6 + [1.0]


def test_split_actions() -> None:
    actions = np.arange(7, dtype=np.float32)[None] / 10 - 0.3  # [1, 3 + 3 + 1]
    layer, blend, budget = split_actions(actions, 3, ["blend", "budget"])
    assert layer.shape == (1, 3) and np.allclose(blend, [[0.5, 0.55, 0.6]])
    assert np.allclose(budget, [0.3])
    assert action_dim(3, ["blend", "budget"]) == 7 and action_dim(3, ["stats"]) == 3
    assert split_actions(actions[:, :3], 3, [])[1:] == (None, None)


def bandit(
    llm: PrunableLLM,
    levers: list[str],
    reference: Profile | None = None,
    lengths: tuple[int, ...] = (SEQ,) * 4,
) -> LeverBandit:
    gen = torch.Generator().manual_seed(5)
    doc = [torch.randint(1, 97, (n,), generator=gen).tolist() for n in lengths]
    task = WindowTask(doc, 0, SEQ, 4, contexts=[doc[:i] for i in range(4)])
    emb = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    action_map = ActionMap(N_LAYERS, D_FF, 8, (0.3, 0.3), reference=reference)
    return LeverBandit(
        llm, task, emb, action_map, LogPerplexityRatioReward(), "mean_abs_activation",
        levers=levers, budget_radius=0.2, price=2.0, price_lr=1.0,
    )  # fmt: skip


def test_lever_bandit_budgets_blend_stats_and_price(llm: PrunableLLM) -> None:
    env = bandit(llm, ["budget", "blend", "stats"])
    assert env.embeddings.shape == (4, 5 + 3 * N_LAYERS + 1)  # embedding + statistics + flag
    assert env.embeddings[0, -1] == 1.0 and env.embeddings[1:, -1].tolist() == [0.0] * 3
    assert env.action_space.shape == (2 * N_LAYERS + 1,)
    idx, targets = np.arange(4), np.full(4, 0.3)
    actions = np.zeros((4, 2 * N_LAYERS + 1), dtype=np.float32)
    actions[:, -1] = [-1.0, -1.0, 1.0, 1.0]  # budgets 0.1, 0.1, 0.5, 0.5: mean on target
    rewards, infos = env.step(idx, targets, actions)
    sparsity = np.array([i["sparsity"] for i in infos])
    assert np.allclose(sparsity, [2 / 24, 2 / 24, 0.5, 0.5])  # 24 align-8 blocks in all
    base = LogPerplexityRatioReward()
    for k, info in enumerate(infos):  # quality plus the price on sparsity above target
        quality = base(info["metric"], info["dense_metric"], info["sparsity"])
        assert rewards[k] == pytest.approx(quality + 2.0 * (sparsity[k] - 0.3), abs=1e-6)
    assert env.price == pytest.approx(2.0 + (0.3 - sparsity.mean()))  # dual ascent
    actions[:, -1] = -1.0  # everyone below target: the price rises
    env.step(idx, targets, actions)
    assert env.price > 2.0 + (0.3 - sparsity.mean())
    assert not llm.is_pruned


def test_the_price_weighs_each_input_by_its_tokens(llm: PrunableLLM) -> None:
    """The mean held on target is token-weighted, as in `eval`: a short input's sparsity is
    paid and counted by its share of the tokens."""
    env = bandit(llm, ["budget"], lengths=(SEQ, 2, SEQ, 2))
    tokens = np.array([1 + SEQ - 1, 1 + 2 - 1, 1 + SEQ - 1, 1 + 2 - 1])  # prefix + all but last
    assert np.allclose(env.token_weight, tokens / tokens.mean())  # 1.6, 0.4, 1.6, 0.4
    actions = np.zeros((4, N_LAYERS + 1), dtype=np.float32)
    actions[:, -1] = [-1.0, 1.0, -1.0, 1.0]  # the short inputs prune more
    rewards, infos = env.step(np.arange(4), np.full(4, 0.3), actions)
    sparsity = np.array([i["sparsity"] for i in infos])
    base = LogPerplexityRatioReward()
    for k, info in enumerate(infos):
        quality = base(info["metric"], info["dense_metric"], info["sparsity"])
        paid = 2.0 * env.token_weight[k] * (sparsity[k] - 0.3)
        assert rewards[k] == pytest.approx(quality + paid, abs=1e-6)
    assert np.allclose(sparsity, [2 / 24, 0.5, 2 / 24, 0.5])  # 24 align-8 blocks in all
    # per input the batch is 0.008 short of 0.3; by tokens (the long inputs prune less) 0.13
    shortfall = 0.3 - np.dot(tokens, sparsity) / tokens.sum()
    assert shortfall == pytest.approx(0.3 - (2 * 8 * 2 / 24 + 2 * 2 * 0.5) / 20)
    assert env.price == pytest.approx(2.0 + shortfall)


def test_lever_bandit_around_a_reference(llm: PrunableLLM) -> None:
    """Zero layer actions are the reference profile at each input's own budget."""
    reference = Profile(np.array([0.1, 0.5]), np.array([[0.0, 0.15, 0.15], [0.0, 0.75, 0.75]]))
    env = bandit(llm, ["budget"], reference)
    actions = np.zeros((4, N_LAYERS + 1), dtype=np.float32)
    actions[:, -1] = [-1.0, -1.0, 1.0, 1.0]  # budgets 0.1, 0.1, 0.5, 0.5
    _, infos = env.step(np.arange(4), np.full(4, 0.3), actions)
    kept = np.stack([info["kept"] for info in infos])
    budgets = np.array([0.1, 0.1, 0.5, 0.5])
    assert np.array_equal(kept, allocate(reference.at(budgets), budgets, D_FF, 8))
    assert kept[0, 0] == kept[3, 0] == D_FF and kept[3, 1] == 16  # layer 0 dense, as referenced
    assert not llm.is_pruned


def test_levers_pay_against_the_reference_at_the_target(llm: PrunableLLM) -> None:
    """Around a reference, quality is paid against the reference at the input's target: zero
    actions lose exactly nothing (only the price on their rounding off target is paid), and any
    action scores its dense-relative reward shifted by one constant per (item, target), so no
    optimum moves."""
    reference = Profile(np.array([0.1, 0.5]), np.array([[0.0, 0.15, 0.15], [0.0, 0.75, 0.75]]))
    env = bandit(llm, ["budget"], reference)
    idx, targets = np.arange(4), np.full(4, 0.3)
    zero = np.zeros((4, N_LAYERS + 1), dtype=np.float32)
    rewards, infos = env.step(idx, targets, zero)
    sparsity = np.array([i["sparsity"] for i in infos])  # 7 of 24 blocks: 0.2917, not 0.3
    paid = 2.0 * env.token_weight * (sparsity - 0.3)
    assert rewards == pytest.approx(paid, abs=1e-7)  # and no quality lost
    assert [i["metric"] for i in infos] == [i["reference_metric"] for i in infos]
    assert all(i["metric"] != i["dense_metric"] for i in infos)
    ref = {i["index"]: i["reference_metric"] for i in infos}
    actions = zero.copy()
    actions[:, -1] = [-1.0, -0.5, 0.5, 1.0]
    env.price = 2.0
    rewards, infos = env.step(idx, targets, actions)
    base = LogPerplexityRatioReward()
    for k, info in enumerate(infos):
        assert info["reference_metric"] == ref[k]  # cached per (item, target)
        paid = 2.0 * env.token_weight[k] * (info["sparsity"] - 0.3)
        dense_relative = base(info["metric"], info["dense_metric"], 0.0)
        shift = np.log(ref[k] / info["dense_metric"])  # log(dense / ref) removed from every action
        assert rewards[k] == pytest.approx(dense_relative + shift + paid, abs=1e-5)
    assert not llm.is_pruned


def test_blend_needs_context_neurons(llm: PrunableLLM) -> None:
    with pytest.raises(ValueError, match="context neurons"):
        gen = torch.Generator().manual_seed(5)
        doc = [torch.randint(1, 97, (SEQ,), generator=gen).tolist() for _ in range(2)]
        LeverBandit(
            llm, WindowTask(doc, 0, SEQ), np.zeros((2, 3), np.float32),
            ActionMap(N_LAYERS, D_FF, 8, (0.3, 0.3)), LogPerplexityRatioReward(), None,
            levers=["blend"],
        )  # fmt: skip
