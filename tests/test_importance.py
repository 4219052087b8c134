from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from transformers import LlamaForCausalLM

from pruning.allocation import keep_masks
from pruning.importance import collect_importance, importance_to_json
from pruning.prunable_llm import PrunableLLM
from tests.fixtures import tiny_llama

N_LAYERS, D_FF, VOCAB = 2, 64, 128


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    # large weights so that pruning visibly changes the logits; eager attention for exactness
    return tiny_llama(
        seed,
        vocab_size=VOCAB,
        intermediate_size=D_FF,
        num_hidden_layers=N_LAYERS,
        initializer_range=0.2,
        attn_implementation="eager",
    )


def batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (n, 2, 10), generator=gen)
    return [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in ids]


def activations(model: LlamaForCausalLM, data: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Reference: every token's down_proj input per layer, [n_tokens, d_ff]."""
    seen: list[list[torch.Tensor]] = [[] for _ in range(N_LAYERS)]
    hooks = [
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda _m, a, i=i: seen[i].append(a[0].reshape(-1, D_FF))
        )
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.inference_mode():
        for b in data:
            model(**b)
    for h in hooks:
        h.remove()
    return [torch.cat(s) for s in seen]


def n_hooks(model: LlamaForCausalLM) -> int:
    return sum(len(layer.mlp.down_proj._forward_pre_hooks) for layer in model.model.layers)


def test_scores_match_the_equations() -> None:
    model, data = tiny_model(), batches()
    acts = activations(model, data)
    mean_abs = collect_importance(model, data, "mean_abs_activation")
    wanda = collect_importance(model, data, "wanda")
    assert mean_abs.num_tokens == wanda.num_tokens == 40
    for i, a in enumerate(acts):
        assert torch.allclose(mean_abs.scores[i], a.abs().mean(0), rtol=1e-5)
        w_norm = model.model.layers[i].mlp.down_proj.weight.norm(dim=0)
        assert torch.allclose(wanda.scores[i], a.norm(dim=0) * w_norm, rtol=1e-5)
    for res in (mean_abs, wanda):
        assert res.scores.shape == (N_LAYERS, D_FF) and res.scores.dtype == torch.float32
        assert torch.equal(res.orderings.sort(dim=1).values, torch.arange(D_FF).expand(2, -1))
        assert torch.equal(res.scores.gather(1, res.orderings), res.scores.sort(1, True).values)
    assert n_hooks(model) == 0


def test_dominant_neuron_ranked_first() -> None:
    model = tiny_model()
    mlp = model.model.layers[1].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[13] *= 20  # huge |act(gate) * up| for neuron 13
        mlp.up_proj.weight[13] *= 20
        mlp.down_proj.weight[:, 41] *= 1000  # huge output weight, ordinary activation
    mean_abs = collect_importance(model, batches(), "mean_abs_activation")
    wanda = collect_importance(model, batches(), "wanda")
    assert mean_abs.orderings[1, 0] == 13
    assert wanda.orderings[1, 0] == 41


def test_padding_is_ignored() -> None:
    model = tiny_model()
    gen = torch.Generator().manual_seed(8)
    a, b = (
        torch.randint(0, VOCAB, (10,), generator=gen),
        torch.randint(0, VOCAB, (6,), generator=gen),
    )
    ids = torch.stack([a, torch.cat([b, torch.randint(0, VOCAB, (4,), generator=gen)])])
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding with junk token ids
    padded = collect_importance(model, [{"input_ids": ids, "attention_mask": mask}], "wanda")
    singles = [{"input_ids": x[None], "attention_mask": torch.ones(1, len(x))} for x in (a, b)]
    separate = collect_importance(model, singles, "wanda")
    assert padded.num_tokens == separate.num_tokens == 16
    assert torch.allclose(padded.scores, separate.scores, rtol=1e-4, atol=1e-6)


def test_hooks_removed_after_exception() -> None:
    model = tiny_model()

    def failing() -> Iterator[dict[str, torch.Tensor]]:
        yield batches(1)[0]
        raise RuntimeError("data broke")

    with pytest.raises(RuntimeError, match="data broke"):
        collect_importance(model, failing(), "mean_abs_activation")
    assert n_hooks(model) == 0
    with pytest.raises(ValueError, match="unknown criterion"):
        collect_importance(model, batches(), "magnitude")


def test_reordered_wrapper_reports_original_indices() -> None:
    plain = collect_importance(tiny_model(), batches(), "mean_abs_activation")
    llm = PrunableLLM(tiny_model(), orderings=plain.orderings)
    wrapped = collect_importance(llm, batches(), "mean_abs_activation")
    assert torch.allclose(wrapped.scores, plain.scores, rtol=1e-5)
    llm.prune(keep_masks(wrapped.orderings, [48, 32]).__getitem__)  # top-k after reorder: views
    assert all(e.is_view for e in llm.undo_pack.entries)
    with pytest.raises(ValueError, match="unpruned"):
        collect_importance(llm, batches(), "wanda")


def test_importance_to_json() -> None:
    res = collect_importance(tiny_model(), batches(), "wanda")
    data = importance_to_json(res, "tiny", "wanda", num_samples=4)
    assert data["n_layers"] == N_LAYERS and data["intermediate_size"] == D_FF
    assert data["num_tokens"] == 40 and data["orderings"] == res.orderings.tolist()
