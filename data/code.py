"""Source code as a third kind of input: CPython 3.11.7 standard-library modules, shipped.

The corpus is one xz-compressed JSON file (`data/code/cpython-3.11.7-lib.json.xz`): the release
and, per module, its path under `Lib/` and its text, unmodified. Every machine scores the same
files: the loader refuses a file whose uncompressed SHA-256 differs from `CORPUS_SHA256`. Files
are split into train and test by a seeded permutation (`split_paths`), never within a file, so
no test module is ever trained on. Items are `CodeFile`s, scored like WikiText pages: lm-eval's
rolling-window word perplexity and bits per byte, counted on the file as it is.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoring.windows import byte_count, word_count

CORPUS_FILE = Path(__file__).resolve().parent / "code" / "cpython-3.11.7-lib.json.xz"
# SHA-256 of the uncompressed JSON (data/SOURCES.md)
CORPUS_SHA256 = "ad62b6a5c10cba5955676184d56c9bfd891f03fa2f59093d052b83aec11ecfe9"
CODE_SPLITS = ("train", "test")
SPLIT_SEED = 0  # fixed: the train/test split of files is part of the corpus
TEST_FRACTION = 0.2
# Lib/ subfolders left out: tests, bundled tools and the near-identical codec tables
EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idlelib", "lib2to3", "site-packages", "tkinter", "turtledemo",
     "ensurepip", "distutils", "venv", "encodings", "__pycache__"}
)  # fmt: skip
SIZE_RANGE = (2_000, 30_000)  # bytes per module: long enough for context, short enough to score


class CorpusError(ValueError):
    """The code corpus is missing or is not the shipped one."""


@dataclass(frozen=True)
class CodeFile:
    text: str  # the module's source: what the model reads
    original_text: str  # the same (code is not detokenized); counts are taken on it
    word_count: int
    byte_count: int
    path: str  # path under Lib/
    type: str = "code"


def make_code_file(path: str, text: str) -> CodeFile:
    return CodeFile(text, text, word_count(text), byte_count(text), path)


def split_paths(paths: list[str], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """Seeded split of sorted file paths into train and test (test: TEST_FRACTION of files)."""
    ordered = sorted(paths)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_test = max(1, round(TEST_FRACTION * len(ordered))) if len(ordered) > 1 else 0
    test = {ordered[i] for i in order[:n_test]}
    return {
        "train": [p for p in ordered if p not in test],
        "test": [p for p in ordered if p in test],
    }


def read_corpus(file: Path = CORPUS_FILE, sha256: str = CORPUS_SHA256) -> dict[str, str]:
    """path -> source text, after checking the uncompressed checksum."""
    if not file.is_file():
        raise CorpusError(f"code corpus {file} not found; restore it from the repository")
    raw = lzma.decompress(file.read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise CorpusError(
            f"code corpus {file.name} has SHA-256 {digest[:12]}..., expected {sha256[:12]}...; "
            "restore the shipped file (data/SOURCES.md)"
        )
    return {entry["path"]: entry["text"] for entry in json.loads(raw)["files"]}


class CodeDataSource:
    """The shipped CPython modules, split by file: `load("train")` / `load("test")`."""

    name = "code"

    def __init__(self, file: Path | None = None, sha256: str = CORPUS_SHA256) -> None:
        self.file, self.sha256 = file or CORPUS_FILE, sha256

    def load(self, split: str) -> list[CodeFile]:
        if split not in CODE_SPLITS:
            raise ValueError(
                f"unknown code split {split!r}; valid splits: {', '.join(CODE_SPLITS)}"
            )
        files = read_corpus(self.file, self.sha256)
        return [make_code_file(p, files[p]) for p in split_paths(list(files))[split]]


def build_corpus(lib: Path, release: str) -> bytes:
    """The uncompressed corpus JSON from a CPython `Lib/` folder (how the shipped file was made:
    `xz -9e` of this output)."""
    files = []
    for path in sorted(lib.rglob("*.py")):
        rel = path.relative_to(lib)
        if EXCLUDED_DIRS & set(rel.parts[:-1]) or rel.name.startswith("_sysconfigdata"):
            continue
        if SIZE_RANGE[0] <= path.stat().st_size <= SIZE_RANGE[1]:
            files.append({"path": rel.as_posix(), "text": path.read_text(encoding="utf-8")})
    corpus = {"release": release, "source": "CPython Lib/", "files": files}
    return (json.dumps(corpus, ensure_ascii=False, indent=0) + "\n").encode("utf-8")
