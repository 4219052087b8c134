"""A pruned model as one GGUF file that llama.cpp (and so Ollama and LM Studio) loads unchanged.

Pure functions turn the narrowed Hugging Face state dict (`narrow_state_dict`) and config into
GGUF tensors and metadata; `write_gguf` is the one adapter that writes them with the `gguf`
package. What llama.cpp needs, read in its source (build 11434):

- `llama` builds every layer with layer 0's MLP width (`feed_forward_length`, scalar or one per
  layer); `deci` (LLaMA layers with per-layer widths, Nemotron-NAS) builds each layer with its
  own. Same graph otherwise, so uniform widths are written as `llama` (what every runtime knows)
  and differing widths as `deci`.
- q and k rows are stored interleaved per head (llama.cpp's rotary layout), not in the Hugging
  Face rotate-half layout: `rope_layout` re-applies what transformers undid when it loaded a GGUF.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gguf import (
    GGML_QUANT_VERSION,
    MODEL_ARCH,
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    GGUFWriter,
    LlamaFileType,
    get_tensor_name_map,
    quants,
)

from export.hf import mlp_keys

SUPPORTED_MODEL_TYPES = ("llama",)  # Hugging Face model_type / GGUF general.architecture
OUTTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
# general.* fields worth keeping from the source file (the rest describe the source's own tensors)
_KEPT_GENERAL = ("name", "basename", "finetune", "organization", "size_label", "license",
                 "languages", "tags")  # fmt: skip


def check_supported(model_type: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"the GGUF export supports {', '.join(SUPPORTED_MODEL_TYPES)} models, not "
            f"{model_type!r}; use --format hf"
        )


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown --outtype {outtype!r}; use one of {', '.join(OUTTYPES)}")


def gguf_arch(widths: Sequence[int]) -> str:
    """`llama` when every layer has the same MLP width, else `deci` (per-layer widths; a width
    of 0 is a layer without MLP there)."""
    return "llama" if len(set(widths)) == 1 and widths[0] > 0 else "deci"


def pad_mlp(
    state_dict: Mapping[str, torch.Tensor], widths: Sequence[int], multiple: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Zero neurons appended so every width is a multiple of `multiple` (a quantization block:
    `down`'s rows must split into whole blocks). A zero gate row gives silu(0) * 0 = 0 and a zero
    down column adds nothing: the same function, up to `multiple - 1` neurons more."""
    out = dict(state_dict)
    padded = [-(-int(w) // multiple) * multiple for w in widths]
    for layer, (width, wide) in enumerate(zip(widths, padded, strict=True)):
        if wide == width:
            continue
        gate, up, down = mlp_keys(layer)
        out[gate] = F.pad(out[gate], (0, 0, 0, wide - width))  # [wide, hidden]
        out[up] = F.pad(out[up], (0, 0, 0, wide - width))
        out[down] = F.pad(out[down], (0, wide - width))  # [hidden, wide]
    return out, padded


def rope_layout(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """q or k rows [n_heads * head_dim, hidden] from rotate-half pairs (i, i + head_dim/2) to
    llama.cpp's adjacent pairs (2i, 2i + 1), head by head."""
    rows = weight.shape[0]
    halves = weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def llama3_rope_factors(rope: Mapping[str, Any], head_dim: int) -> np.ndarray:
    """Per-frequency divisors of LLaMA-3.1's rope scaling [head_dim / 2]: 1 for short
    wavelengths, `factor` for long ones, interpolated in between (llama.cpp's `rope_freqs`)."""
    freqs = rope["rope_theta"] ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    old = rope["original_max_position_embeddings"]
    low, high, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
    smooth = np.clip((old / wavelen - low) / (high - low), 0.0, 1.0)  # 0: long, 1: short
    return (1.0 / ((1.0 - smooth) / factor + smooth)).astype(np.float32)


@dataclass(frozen=True)
class Hparams:
    """The LLaMA config fields a GGUF needs (from a transformers config dict)."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context: int
    vocab: int
    rms_eps: float
    rope: dict[str, Any]
    tied: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Hparams:
        check_supported(config.get("model_type", "?"))
        n_heads = config["num_attention_heads"]
        rope = dict(config.get("rope_parameters") or {})
        rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") not in ("default", "llama3"):
            raise NotImplementedError(
                f"rope scaling {rope['rope_type']!r} is not supported by the GGUF export"
            )
        for key in ("attention_bias", "mlp_bias"):
            if config.get(key):
                raise NotImplementedError(f"{key}=True is not supported by the GGUF export")
        return cls(
            n_layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // n_heads,
            context=config["max_position_embeddings"],
            vocab=config["vocab_size"],
            rms_eps=float(config["rms_norm_eps"]),
            rope=rope,
            tied=bool(config.get("tie_word_embeddings", False)),
        )


def gguf_tensors(
    state_dict: Mapping[str, torch.Tensor], hp: Hparams, widths: Sequence[int], arch: str
) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in Hugging Face [out, in] layout) for every tensor to write.

    Names from the `gguf` package's own map; a tied `lm_head` is left out (llama.cpp reuses
    `token_embd` when `output` is absent), and so is the MLP (with its norm) of a layer of width
    0 (`deci` skips that block)."""
    names = get_tensor_name_map(MODEL_ARCH[arch.upper()], hp.n_layers)
    no_mlp = {layer for layer, width in enumerate(widths) if width == 0}
    for key, tensor in state_dict.items():
        if key == "lm_head.weight" and hp.tied:
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise NotImplementedError(f"tensor {key} has no GGUF name; not a LLaMA layout")
        if ".ffn_" in name and int(name.split(".")[1]) in no_mlp:
            continue
        array = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
        if name.endswith(".attn_q.weight"):
            array = rope_layout(array, hp.n_heads)
        elif name.endswith(".attn_k.weight"):
            array = rope_layout(array, hp.n_kv_heads)
        yield name, array
    if hp.rope.get("rope_type") == "llama3":
        yield "rope_freqs.weight", llama3_rope_factors(hp.rope, hp.head_dim)


def tensor_type(
    name: str, shape: Sequence[int], outtype: GGMLQuantizationType
) -> GGMLQuantizationType:
    """Vectors (norms, rope factors) stay float32 as in llama.cpp's own files; a row that does
    not split into whole quantization blocks falls back to float16."""
    if len(shape) == 1 or name == "rope_freqs.weight":
        return GGMLQuantizationType.F32
    block = quants.GGML_QUANT_SIZES[outtype][0]
    return outtype if shape[-1] % block == 0 else GGMLQuantizationType.F16


def encode(array: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    return quants.quantize(array, qtype)


# ---- metadata carried over from a source GGUF ---------------------------------------------------


@dataclass(frozen=True)
class SourceField:
    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


def source_fields(path: Path) -> list[SourceField]:
    """Tokenizer (vocabulary, merges, special ids, chat template) and descriptive general.*
    fields of a GGUF file, to write unchanged into the export."""
    reader = GGUFReader(path)
    kept = []
    for key, f in reader.fields.items():
        general = key.startswith("general.") and key.removeprefix("general.") in _KEPT_GENERAL
        if not (key.startswith("tokenizer.") or general):
            continue
        sub = f.types[1] if f.types[0] == GGUFValueType.ARRAY else None
        kept.append(SourceField(key, f.contents(), f.types[0], sub))
    return kept


def source_architecture(path: Path) -> str:
    arch = GGUFReader(path).fields.get("general.architecture")
    return arch.contents() if arch is not None else "?"


# ---- the file ----------------------------------------------------------------------------------


@dataclass
class Written:
    arch: str
    widths: list[int]  # MLP width per layer in the file (kept, padded to whole blocks)
    tensor_types: dict[str, str] = field(default_factory=dict)  # name -> GGML type
    fallbacks: list[str] = field(default_factory=list)  # tensors not in the asked type
    bytes: int = 0


def write_gguf(
    path: Path,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    widths: Sequence[int],
    outtype: str,
    fields: Sequence[SourceField] = (),
    arch: str | None = None,
) -> Written:
    """Write the narrowed model (`widths` [n_layers] MLP neurons per layer) to `path`; `arch`
    "deci" writes uniform widths as deci too (to compare the two graphs)."""
    check_outtype(outtype)
    hp = Hparams.from_config(config)
    qtype, file_type = OUTTYPES[outtype]
    state_dict, widths = pad_mlp(state_dict, widths, quants.GGML_QUANT_SIZES[qtype][0])
    arch = arch or gguf_arch(widths)
    if arch == "llama" and gguf_arch(widths) != "llama":
        raise ValueError(f"llama builds every layer with layer 0's width; widths {widths} differ")
    writer = GGUFWriter(path, arch)
    for f in fields:
        writer.add_key_value(f.key, f.value, f.vtype, f.sub_type)
    writer.add_block_count(hp.n_layers)
    writer.add_context_length(hp.context)
    writer.add_embedding_length(hp.hidden)
    writer.add_feed_forward_length(widths[0] if arch == "llama" else [int(w) for w in widths])
    writer.add_head_count(hp.n_heads)
    writer.add_head_count_kv(hp.n_kv_heads)
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_rope_freq_base(float(hp.rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_vocab_size(hp.vocab)
    writer.add_file_type(int(file_type))
    if qtype not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        writer.add_quantization_version(GGML_QUANT_VERSION)
    written = Written(arch, widths)
    for name, array in gguf_tensors(state_dict, hp, widths, arch):
        ttype = tensor_type(name, array.shape, qtype)
        if ttype != qtype and array.ndim > 1:
            written.fallbacks.append(name)
        data = encode(array, ttype)
        writer.add_tensor(name, data, raw_dtype=ttype)
        written.tensor_types[name] = ttype.name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    written.bytes = path.stat().st_size
    return written
