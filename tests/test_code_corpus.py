from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import pytest

from data.code import (
    CORPUS_FILE,
    CORPUS_SHA256,
    CodeDataSource,
    CorpusError,
    read_corpus,
    split_paths,
)


def test_shipped_corpus_checksum_size_and_split() -> None:
    files = read_corpus()
    assert len(files) == 242 and "json/decoder.py" in files
    source = CodeDataSource()
    train, test = source.load("train"), source.load("test")
    assert (len(train), len(test)) == (194, 48)
    assert not {f.path for f in train} & {f.path for f in test}  # never train on a test file
    assert [f.path for f in test][:4] == [
        "__future__.py", "_markupbase.py", "_osx_support.py", "asynchat.py",
    ]  # fmt: skip
    assert sum(f.byte_count for f in test) == 541_834
    first = test[0]
    assert first.text == first.original_text == files[first.path]  # code is read as it is
    assert first.word_count == len(first.text.split()) + 1  # lm-eval's re.split counts the end


def test_split_is_fixed_by_seed_and_disjoint() -> None:
    paths = [f"m{i}.py" for i in range(10)]
    a, b = split_paths(paths), split_paths(list(reversed(paths)))
    assert a == b and len(a["test"]) == 2 and sorted(a["train"] + a["test"]) == sorted(paths)
    assert split_paths(paths, seed=1) != a


def test_corpus_with_other_checksum_is_refused(tmp_path: Path) -> None:
    raw = json.dumps({"release": "x", "files": [{"path": "a.py", "text": "pass\n"}]}).encode()
    bad = tmp_path / "corpus.json.xz"
    bad.write_bytes(lzma.compress(raw))
    with pytest.raises(CorpusError, match="SHA-256"):
        read_corpus(bad)
    assert read_corpus(bad, hashlib.sha256(raw).hexdigest()) == {"a.py": "pass\n"}
    with pytest.raises(CorpusError, match="not found"):
        read_corpus(tmp_path / "missing.json.xz")
    assert CORPUS_FILE.is_file() and len(CORPUS_SHA256) == 64


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="valid splits: train, test"):
        CodeDataSource().load("validation")
