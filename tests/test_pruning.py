from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from pruning import prunable_llm
from pruning.allocation import keep_masks, kept_counts
from pruning.importance import read_importance_json, write_importance_json
from pruning.prunable_llm import PrunableLLM
from tests.fixtures import tiny_llama

N_LAYERS, D_FF = 3, 64


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    # large weights so that pruning visibly changes the logits; eager attention for exactness
    return tiny_llama(
        seed,
        vocab_size=128,
        intermediate_size=D_FF,
        num_hidden_layers=N_LAYERS,
        initializer_range=0.2,
        attn_implementation="eager",
    )


@pytest.fixture
def llm() -> PrunableLLM:
    return PrunableLLM(tiny_model())


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(model: PrunableLLM | LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def assert_same_params(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    now = dict(model.named_parameters())
    assert now.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(now[name], value), name


@contextmanager
def zeroed(model: LlamaForCausalLM, masks: torch.Tensor) -> Iterator[None]:
    """Reference: zero the pruned neurons' activations (masks [n_layers, d_ff], model layout)."""
    hooks = [
        layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a, k=k: (a[0] * k,))
        for layer, k in zip(model.model.layers, masks.float())
    ]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def random_masks(gen: torch.Generator) -> torch.Tensor:
    masks = torch.rand(N_LAYERS, D_FF, generator=gen) < 0.5  # [n_layers, d_ff]
    masks[0] = False  # all pruned
    masks[1] = True  # none pruned
    return masks


def test_gather_path_matches_zeroed_activations(llm: PrunableLLM, ids: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        masks = random_masks(gen)
        with zeroed(llm.wrapped, masks):
            ref = logits(llm, ids)
        with llm.pruned(masks.__getitem__):
            # layer 0 keeps nothing (an empty prefix: a view), layer 2 is gathered
            assert [e.is_view for e in llm.undo_pack.entries] == [True, False]
            out = logits(llm, ids)
        assert torch.allclose(out, ref, atol=1e-5)
        assert (out - logits(llm, ids)).abs().max() > 1e-3  # pruning did change the output


def test_view_path_after_reorder(llm: PrunableLLM, ids: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(3)
    orderings = torch.stack([torch.randperm(D_FF, generator=gen) for _ in range(N_LAYERS)])
    ranks = torch.argsort(orderings, dim=1)  # [n_layers, d_ff] rank of neuron j
    keep = torch.tensor([0, D_FF, 37])
    masks = ranks < keep[:, None]  # top-k in original indices
    with zeroed(llm.wrapped, masks):
        ref = logits(llm, ids)
    originals = [layer.mlp.gate_proj.weight for layer in llm.model.layers]
    llm = PrunableLLM(llm.wrapped, orderings)
    with llm.pruned(masks.__getitem__):
        assert [e.is_view for e in llm.undo_pack.entries] == [True, True]
        w = llm.model.layers[2].mlp.gate_proj.weight
        assert w.shape == (37, 32) and w.data_ptr() == originals[2].data_ptr()  # no copy
        assert llm.model.layers[2].mlp.down_proj.weight.shape == (32, 37)
        assert llm.keep_counts() == [0, D_FF, 37]
        out = logits(llm, ids)
    assert torch.allclose(out, ref, atol=1e-5)


def test_reorder_keeps_function_and_restore_is_exact(llm: PrunableLLM, ids: torch.Tensor) -> None:
    before, ref = snapshot(llm.wrapped), logits(llm, ids)
    objects = [p for p in llm.parameters()]
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):  # reordering twice composes correctly
        llm._reorder([torch.randperm(D_FF, generator=gen) for _ in range(N_LAYERS)])
        assert torch.allclose(logits(llm, ids), ref, atol=1e-5)
    assert not torch.equal(
        llm.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"]
    )
    llm._reorder(torch.arange(D_FF).expand(N_LAYERS, D_FF))  # back to the original order
    assert_same_params(llm.wrapped, before)
    assert all(a is b for a, b in zip(objects, llm.parameters()))


def test_undo_is_bit_exact_after_many_cycles(llm: PrunableLLM, ids: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(5)
    orderings = [torch.randperm(D_FF, generator=gen) for _ in range(N_LAYERS)]
    llm = PrunableLLM(llm.wrapped, torch.stack(orderings))
    before, objects, ref = snapshot(llm.wrapped), list(llm.parameters()), logits(llm, ids)
    for i in range(30):
        if i % 3 == 0:
            llm.prune(random_masks(gen).__getitem__)  # gather path
        elif i % 3 == 1:
            llm.prune(torch.randint(0, D_FF + 1, (N_LAYERS,), generator=gen))  # counts: views
        else:
            kept = torch.randint(0, D_FF + 1, (N_LAYERS,), generator=gen)
            llm.prune(keep_masks(llm.permutation, kept).__getitem__)  # prefix masks: views
        assert llm.is_pruned
        llm.undo_prune()
        assert not llm.is_pruned and llm.sparsity == 0.0
    assert_same_params(llm.wrapped, before)
    assert all(a is b for a, b in zip(objects, llm.parameters()))
    assert torch.equal(logits(llm, ids), ref)


def test_context_manager_restores_on_exception(llm: PrunableLLM) -> None:
    before = snapshot(llm.wrapped)
    with (
        pytest.raises(RuntimeError, match="boom"),
        llm.pruned(lambda _layer: torch.rand(D_FF) < 0.3),
    ):
        assert llm.is_pruned
        raise RuntimeError("boom")
    assert not llm.is_pruned
    assert_same_params(llm.wrapped, before)


@pytest.mark.parametrize(
    ("bad_layer", "bad_mask", "message"),
    [
        (1, torch.ones(D_FF + 1, dtype=torch.bool), "layer 1: mask length"),
        (2, torch.ones(D_FF, dtype=torch.long), "layer 2: mask dtype"),
        (0, [True] * D_FF, "layer 0: mask must be a torch.Tensor"),
    ],
)
def test_bad_mask_raises_and_leaves_model_unchanged(
    llm: PrunableLLM, bad_layer: int, bad_mask: object, message: str
) -> None:
    before, objects = snapshot(llm.wrapped), list(llm.parameters())
    good = torch.rand(D_FF) < 0.5
    with pytest.raises(ValueError, match=message):
        llm.prune(lambda layer: bad_mask if layer == bad_layer else good)
    assert not llm.is_pruned
    assert all(a is b for a, b in zip(objects, llm.parameters()))
    assert_same_params(llm.wrapped, before)


def test_prune_twice_raises(llm: PrunableLLM) -> None:
    llm.prune(lambda layer: torch.arange(D_FF) < 10 * layer)
    shapes = [p.shape for p in llm.parameters()]
    with pytest.raises(ValueError, match=r"already pruned \(layers \[0, 1, 2\]\)"):
        llm.prune(lambda _layer: torch.ones(D_FF, dtype=torch.bool))
    assert [p.shape for p in llm.parameters()] == shapes
    with pytest.raises(ValueError, match="pruned"):
        llm._reorder(torch.arange(D_FF).expand(N_LAYERS, -1))


def test_sparsity_is_pruned_fraction(llm: PrunableLLM) -> None:
    assert llm.sparsity == 0.0 and llm.n_layers == N_LAYERS and llm.intermediate_size == D_FF
    kept = [0, 64, 16]
    llm.prune(lambda layer: torch.arange(D_FF) < kept[layer])
    assert llm.sparsity == pytest.approx((64 + 0 + 48) / (3 * 64))
    assert llm.keep_counts() == kept


def test_documented_surface_storage_cast_dtype_and_device_change_nothing(
    llm: PrunableLLM, ids: torch.Tensor
) -> None:
    """The design card's `prune(mask_fn, storage, cast_dtype)`, `undo_prune(device)`, `sparsity`
    and `is_pruned`: the arguments are accepted and do nothing (pruning takes views)."""
    before, objects = snapshot(llm.wrapped), list(llm.parameters())
    kept = [8, 64, 24]
    with llm.pruned(kept):
        expected = logits(llm, ids)
    llm.prune(lambda layer: torch.arange(D_FF) < kept[layer], "cpu", torch.float16)
    assert llm.is_pruned and llm.sparsity == pytest.approx(1 - 96 / 192)
    assert torch.equal(logits(llm, ids), expected)
    llm.undo_prune(device="cpu")
    assert not llm.is_pruned and llm.sparsity == 0.0
    assert_same_params(llm.wrapped, before)
    assert all(a is b for a, b in zip(objects, llm.parameters()))
    with pytest.raises(ValueError, match="storage"):
        llm.prune(kept, storage="disk")


def test_forwards_like_the_wrapped_model(llm: PrunableLLM, ids: torch.Tensor) -> None:
    assert llm.config is llm.wrapped.config
    assert llm.model is llm.wrapped.model  # attribute forwarding
    assert torch.equal(llm.forward(input_ids=ids).logits, llm.wrapped(input_ids=ids).logits)
    out = llm.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


def test_kept_counts_rounding() -> None:
    assert kept_counts([0.3], 128, 8).tolist() == [88]  # 89.6 -> 11.2 * 8 -> 11 * 8
    assert kept_counts([0.3], 128, 1).tolist() == [90]
    assert kept_counts([0.0, 1.0], 128, 8).tolist() == [128, 0]
    assert kept_counts([0.5], 40, 8).tolist() == [16]  # 20 / 8 = 2.5 -> ties to even -> 2
    assert kept_counts([0.5], 24, 8).tolist() == [16]  # 12 / 8 = 1.5 -> 2
    fractions = np.linspace(0, 1, 101)
    assert kept_counts(fractions, 1536, 1).tolist() == [round((1 - f) * 1536) for f in fractions]
    assert kept_counts([[0.0, 0.5], [1.0, 0.25]], 64, 8).tolist() == [[64, 32], [0, 48]]
    with pytest.raises(ValueError, match="divide"):
        kept_counts([0.5], 100, 8)
    with pytest.raises(ValueError, match="layer 3: fraction"):
        kept_counts([0.1, 0.2, 0.3, 1.5], 128, 8)


def test_keep_masks_are_importance_prefixes() -> None:
    gen = torch.Generator().manual_seed(6)
    orderings = torch.stack([torch.randperm(128, generator=gen) for _ in range(4)])
    masks = keep_masks(orderings, [128, 88, 64, 0])
    assert masks.sum(1).tolist() == [128, 88, 64, 0]
    assert set(orderings[1, :88].tolist()) == set(masks[1].nonzero().flatten().tolist())


def test_importance_json_roundtrip_and_validation(tmp_path: Path) -> None:
    orderings = torch.stack([torch.randperm(D_FF) for _ in range(N_LAYERS)])
    data = {
        "model": "tiny", "criterion": "wanda", "num_samples": 2, "num_tokens": 20,
        "date": "2024-01-01", "n_layers": N_LAYERS, "intermediate_size": D_FF,
        "orderings": orderings.tolist(),
    }  # fmt: skip
    path = tmp_path / "imp.json"
    write_importance_json(path, data)
    loaded = read_importance_json(path, N_LAYERS, D_FF)
    assert torch.equal(loaded.orderings, orderings) and loaded.scores is None
    with pytest.raises(ValueError, match="4 layers"):
        read_importance_json(path, 4, D_FF)
    with pytest.raises(ValueError, match="width"):
        read_importance_json(path, N_LAYERS, 128)
    data["orderings"][1][0] = data["orderings"][1][1]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="layer 1: ordering is not a permutation"):
        read_importance_json(path, N_LAYERS, D_FF)


def test_counts_equal_prefix_masks_and_zeroed_activations(ids: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(9)
    orderings = torch.stack([torch.randperm(D_FF, generator=gen) for _ in range(N_LAYERS)])
    kept = [0, 64, 40]
    masks = keep_masks(orderings, kept)  # original ids
    model = tiny_model()
    with zeroed(model, masks):
        ref = logits(model, ids)
    llm = PrunableLLM(model, orderings)
    for allocation in (kept, np.array(kept), torch.tensor(kept), masks.__getitem__):
        with llm.pruned(allocation):
            assert llm.keep_counts() == kept and llm.sparsity == pytest.approx(88 / 192)
            assert all(e.is_view for e in llm.undo_pack.entries)
            assert torch.allclose(logits(llm, ids), ref, atol=1e-5)


def test_kept_counts_are_validated(llm: PrunableLLM) -> None:
    with pytest.raises(ValueError, match=r"layer 1: kept count 70 outside \[0, 64\]"):
        llm.prune([32, 70, 32])
    with pytest.raises(ValueError, match="expected 3 kept counts"):
        llm.prune([32, 32])
    with pytest.raises(ValueError, match="integers"):
        llm.prune(np.array([32.0, 32.0, 32.0]))
    assert not llm.is_pruned


def test_prefix_views_are_reused_and_bounded(
    llm: PrunableLLM, ids: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    with llm.pruned([8, 16, 24]):
        first, ref = llm.model.layers[1].mlp.gate_proj.weight, logits(llm, ids)
    with llm.pruned(np.array([8, 16, 24])):
        assert llm.model.layers[1].mlp.gate_proj.weight is first  # the same view, not a new one
        assert torch.equal(logits(llm, ids), ref)
    monkeypatch.setattr(prunable_llm, "_MAX_CACHED_VIEWS", 4)
    for k in (8, 16, 24, 32, 40):
        with llm.pruned([k] * N_LAYERS):
            assert llm.keep_counts() == [k] * N_LAYERS
        assert len(llm._views) <= 4
    assert not llm.is_pruned
