from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from gguf import GGUFReader
from gguf import GGUFValueType as T
from gguf.quants import dequantize
from transformers import AutoModelForCausalLM

from export.gguf import (
    SourceField,
    gguf_arch,
    llama3_rope_factors,
    pad_mlp,
    rope_layout,
    write_gguf,
)
from export.hf import narrow_state_dict
from main import main
from pruning.prunable_llm import PrunableLLM
from tests.fixtures import fails_cleanly, make_tiny_project, runs, tiny_llama


def tokenizer_fields(vocab_file: Path) -> list[SourceField]:
    """A byte-pair tokenizer over the tiny project's words (two swapped for one valid merge)."""
    vocab = json.loads(vocab_file.read_text())["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    tokens[tokens.index("=")], tokens[tokens.index(",")] = "o", "n"
    types = [3 if t.startswith("<") else 1 for t in tokens]
    return [
        SourceField("general.name", "tiny", T.STRING),
        SourceField("tokenizer.ggml.model", "gpt2", T.STRING),
        SourceField("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
        SourceField("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
        SourceField("tokenizer.ggml.merges", ["o n"], T.ARRAY, T.STRING),
        SourceField("tokenizer.ggml.bos_token_id", 1, T.UINT32),
        SourceField("tokenizer.ggml.eos_token_id", 2, T.UINT32),
        SourceField("tokenizer.chat_template", "{{ messages }}", T.STRING),
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project with its LLM as a dense float32 GGUF file (the usual source)."""
    root = tmp_path_factory.mktemp("tiny_gguf")
    config = make_tiny_project(root)
    cfg = yaml.safe_load(config.read_text())
    hf = Path(cfg["model"]["llm"])
    llm = AutoModelForCausalLM.from_pretrained(hf)
    fields = tokenizer_fields(hf / "tokenizer.json")
    write_gguf(root / "tiny.gguf", llm.state_dict(), llm.config.to_dict(), [64, 64], "f32", fields)
    cfg["model"]["llm"] = str(root / "tiny.gguf")
    config.write_text(yaml.safe_dump(cfg))
    return config


def export_gguf(config: Path, *argv: str) -> dict:
    before = set(runs(config))
    assert main(["export", "--config", str(config), "--format", "gguf", *argv]) == 0
    (run,) = set(runs(config)) - before
    return json.loads((run / "export.json").read_text())


def field(reader: GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def tensor(reader: GGUFReader, name: str) -> np.ndarray:
    (t,) = [t for t in reader.tensors if t.name == name]
    return dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))


# ---- pure pieces -------------------------------------------------------------------------------


def test_rope_layout_interleaves_halves_per_head() -> None:
    w = np.arange(16.0)[:, None]  # two heads of 8 rows
    assert rope_layout(w, 2)[:, 0].tolist() == [
        0,
        4,
        1,
        5,
        2,
        6,
        3,
        7,
        8,
        12,
        9,
        13,
        10,
        14,
        11,
        15,
    ]


def test_llama3_rope_factors_pin_numbers() -> None:
    rope = {"rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    factors = llama3_rope_factors(rope, 128)  # LLaMA-3.1-8B
    assert factors.shape == (64,) and factors[0] == 1.0 and factors[-1] == 8.0
    assert int((factors == 1.0).sum()) == 29 and int((factors == 8.0).sum()) == 29
    assert factors[30] == pytest.approx(1.5534146, abs=1e-6)  # interpolated band (29..34)


def test_arch_and_padding() -> None:
    assert gguf_arch([64, 64]) == "llama" and gguf_arch([8, 64]) == "deci"
    assert gguf_arch([0, 0]) == "deci"  # no MLP at all: only deci skips the block
    state = narrow_state_dict(tiny_llama().state_dict(), [8, 40, 64])
    padded, widths = pad_mlp(state, [8, 40, 64], 32)
    assert widths == [32, 64, 64]
    gate = padded["model.layers.0.mlp.gate_proj.weight"]  # [32, hidden]
    assert gate.shape == (32, 32) and torch.equal(
        gate[:8], state["model.layers.0.mlp.gate_proj.weight"]
    )
    assert not gate[8:].any() and not padded["model.layers.0.mlp.down_proj.weight"][:, 8:].any()


def test_per_layer_widths_file(tmp_path: Path) -> None:
    model = tiny_llama()  # 3 layers, hidden 32, width 64, 4 heads, 2 kv heads, untied
    kept = [8, 40, 0]
    state = narrow_state_dict(model.state_dict(), kept)
    fields = [SourceField("tokenizer.chat_template", "{{ x }}", T.STRING)]
    written = write_gguf(tmp_path / "m.gguf", state, model.config.to_dict(), kept, "f32", fields)
    reader = GGUFReader(tmp_path / "m.gguf")
    assert written.arch == field(reader, "general.architecture") == "deci"
    assert field(reader, "deci.feed_forward_length") == [8, 40, 0]
    assert field(reader, "tokenizer.chat_template") == "{{ x }}"
    assert field(reader, "deci.attention.head_count_kv") == 2
    assert tensor(reader, "blk.1.ffn_down.weight").shape == (32, 40)
    assert tensor(reader, "blk.0.ffn_gate.weight").shape == (8, 32)
    assert not any(t.name.startswith("blk.2.ffn_") for t in reader.tensors)  # width 0
    q = state["model.layers.1.self_attn.q_proj.weight"].numpy()
    assert np.array_equal(tensor(reader, "blk.1.attn_q.weight"), rope_layout(q, 4))
    k = state["model.layers.1.self_attn.k_proj.weight"].numpy()
    assert np.array_equal(tensor(reader, "blk.1.attn_k.weight"), rope_layout(k, 2))
    assert np.array_equal(tensor(reader, "output.weight"), state["lm_head.weight"].numpy())


def test_q8_0_pads_to_whole_blocks(tmp_path: Path) -> None:
    model = tiny_llama()
    kept = [8, 40, 64]
    state = narrow_state_dict(model.state_dict(), kept)
    written = write_gguf(tmp_path / "m.gguf", state, model.config.to_dict(), kept, "q8_0")
    assert written.widths == [32, 64, 64] and written.fallbacks == []
    assert written.tensor_types["blk.0.ffn_down.weight"] == "Q8_0"
    assert written.tensor_types["blk.0.ffn_norm.weight"] == "F32"
    reader = GGUFReader(tmp_path / "m.gguf")
    assert (
        field(reader, "general.file_type") == 7
        and field(reader, "general.quantization_version") == 2
    )
    down = tensor(reader, "blk.0.ffn_down.weight")  # [hidden, 32]
    assert not down[:, 8:].any()
    ref = state["model.layers.0.mlp.down_proj.weight"].numpy()
    assert np.abs(down[:, :8] - ref).max() < np.abs(ref).max() / 100  # 8-bit blocks


def test_uniform_export_reads_back_as_the_pruned_model(project: Path) -> None:
    """transformers reads a `llama` GGUF back (undoing the rope layout): same logits as the
    PrunableLLM-pruned source, so names, shapes and the q/k layout are right."""
    result = export_gguf(project, "uniform:0.5", "--outtype", "f32")
    assert result["gguf_arch"] == "llama" and result["kept"] == [32, 32]
    assert result["tensor_types"] == {"F32": 2 * 9 + 3} and result["fallbacks"] == []
    path = Path(result["gguf_file"])
    assert path.parent == Path(result["model_dir"]) and path.name == "tiny-pruned-f32.gguf"
    exported = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    cfg = yaml.safe_load(project.read_text())
    source = AutoModelForCausalLM.from_pretrained(
        Path(cfg["model"]["llm"]).parent, gguf_file="tiny.gguf"
    )
    orderings = torch.tensor(
        json.loads(Path(cfg["env"]["importance_file"]).read_text())["orderings"]
    )
    ref = PrunableLLM(source.eval(), orderings)
    ranks = torch.argsort(orderings, dim=1)
    ref.prune(lambda layer: ranks[layer] < 32)
    ids = torch.arange(4, 20)[None]
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, ref(ids).logits, rtol=0, atol=1e-6)
    reader = GGUFReader(path)
    assert field(reader, "tokenizer.chat_template") == "{{ messages }}"
    assert field(reader, "general.name") == "tiny"


def test_per_layer_export_records_widths(project: Path) -> None:
    result = export_gguf(project, "0.5,0.125", "--outtype", "q8_0")
    assert result["kept"] == [32, 56] and result["gguf_widths"] == [32, 64]  # padded to 32
    assert result["gguf_arch"] == "deci" and result["outtype"] == "q8_0"
    reader = GGUFReader(result["gguf_file"])
    assert field(reader, "deci.feed_forward_length") == [32, 64]
    assert result["gguf_bytes"] == Path(result["gguf_file"]).stat().st_size


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "gguf", "--outtype", "q4_k"], "unknown --outtype 'q4_k'"),
        (["--outtype", "f16"], "--outtype is for --format gguf"),
        (["--format", "onnx"], "unknown --format 'onnx'"),
    ],
)
def test_bad_options(
    project: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    fails_cleanly(
        capsys, ["export", "--config", str(project), "uniform:0.5", *extra], message, project
    )


def test_existing_folder_needs_force(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv = [
        "export",
        "--config",
        str(project),
        "uniform:0.5",
        "--format",
        "gguf",
        "--output",
        str(out),
    ]
    fails_cleanly(capsys, argv, "pass --force", project)
    assert list(out.iterdir()) == []


def test_unsupported_sources(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = make_tiny_project(tmp_path)
    argv = ["export", "--config", str(config), "uniform:0.5", "--format", "gguf"]
    fails_cleanly(capsys, argv, "convert_hf_to_gguf.py", config)  # a Hugging Face folder
    llm = Path(yaml.safe_load(config.read_text())["model"]["llm"])
    hf_config = json.loads((llm / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps(hf_config | {"model_type": "qwen2"}))
    fails_cleanly(capsys, argv, "supports llama models, not 'qwen2'", config)


# ---- the benchmark's arithmetic ----------------------------------------------------------------


def test_bench_profile_and_weights_read() -> None:
    from bench.bench_gguf import profile_kept, weights_read

    kept = profile_kept(30, 1536, 0.3, 32)
    assert kept[[0, 1, 28, 29]].tolist() == [1536] * 4 and set(kept[2:28].tolist()) == {992}
    assert abs(1 - kept.sum() / (30 * 1536) - 0.3) < 0.01
    tied = [
        ("token_embd.weight", 100, 50),
        ("blk.0.ffn_norm.weight", 4, 1),
        ("blk.0.ffn_up.weight", 20, 10),
    ]
    assert weights_read(tied) == (124, 60)  # the embedding is the output matrix: read in full
    untied = [*tied, ("output.weight", 100, 50)]
    assert weights_read(untied) == (124, 60)  # one embedding row per token: not counted
