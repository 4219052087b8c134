"""Text sources for training and evaluation: document-level WikiText-2 and MMLU.

Items are frozen dataclasses (`WikiDocument`, `TextChunk`, `MMLUQuestion`); every item has a
`text` (what the model reads). A source is built with `make_data_source(name, path)`:
`path=None` loads from the Hugging Face hub (needs `datasets` and network), a folder loads the
original release files, parsed here so that local and hub items are identical.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import lzma
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from scoring.mmlu import LETTERS, format_question
from scoring.windows import byte_count, word_count

WIKITEXT_HUB = ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1")
WIKITEXT_FILES = {
    "train": "wiki.train.raw",
    "validation": "wiki.valid.raw",
    "test": "wiki.test.raw",
}
MMLU_HUB = ("cais/mmlu", "all")
MMLU_FOLDERS = {"test": "test", "validation": "val", "dev": "dev"}


@dataclass(frozen=True)
class WikiDocument:
    text: str  # detokenized page: what the model is scored on
    original_text: str  # the page as in the raw file / hub `page` column
    word_count: int  # counted on original_text, as lm-eval does
    byte_count: int


@dataclass(frozen=True)
class TextChunk:
    text: str  # decoded window
    token_ids: tuple[int, ...]  # [<= max_length]
    doc_index: int
    chunk_index: int


@dataclass(frozen=True)
class MMLUQuestion:
    text: str  # zero-shot prompt ending in "Answer:"
    question: str
    choices: tuple[str, str, str, str]
    answer: int  # 0-3
    answer_letter: str
    subject: str


class DataSource(Protocol):
    name: ClassVar[str]

    def load(self, split: str) -> Sequence[Any]: ...


class TokenizerLike(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


# ---------------------------------------------------------------- pure core: WikiText


def _is_page_title(line: str) -> bool:
    # Collapsing "= =" first makes sub-headings (" = = Sub = = ") start with "==", so only
    # top-level " = Title = " lines open a page (the hub script's rule).
    collapsed = line.replace("= = =", "===").replace("= =", "==").strip()
    return collapsed.startswith("= ") and collapsed.endswith(" =")


def split_wikitext_pages(raw: str) -> list[str]:
    """Split a raw WikiText file into pages exactly as EleutherAI/wikitext_document_level does."""
    pages: list[str] = []
    lines: list[str] = []
    for line in raw.split("\n"):
        if _is_page_title(line):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    # The hub script appends the last page unconditionally; it holds a title unless the file
    # has none, so only a heading-free whitespace file yields a blank page.
    pages.append("\n".join(lines))
    return pages


def detokenize_wikitext(page: str) -> str:
    """Undo WikiText tokenization spacing; same rules and order as lm-eval's wikitext task."""
    s = page.replace("s '", "s'")
    # Slashes are literal here (a no-op upstream); kept so outputs match lm-eval byte for byte.
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for old, new in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")):
        s = s.replace(old, new)
    for p in ":;.!?,":
        s = s.replace(f" {p} ", f"{p} ")
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for old, new in (("= = = =", "===="), ("= = =", "==="), ("= =", "==")):
        s = s.replace(old, new)
    s = s.replace(" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}")
    for old, new in ((" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        s = s.replace(old, new)
    return s


def make_wiki_document(page: str) -> WikiDocument:
    return WikiDocument(
        text=detokenize_wikitext(page),
        original_text=page,
        word_count=word_count(page),
        byte_count=byte_count(page),
    )


def chunk_documents(
    docs: Sequence[WikiDocument], tokenizer: TokenizerLike, max_length: int
) -> list[TextChunk]:
    """Cut each document's `text` into consecutive windows of at most `max_length` tokens.

    Windows never cross documents and carry no special tokens (the caller adds BOS if wanted).
    Decoding a window may split a multi-byte character at its edges.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    chunks: list[TextChunk] = []
    for doc_index, doc in enumerate(docs):
        ids = tokenizer.encode(doc.text, add_special_tokens=False)
        for chunk_index, start in enumerate(range(0, len(ids), max_length)):
            window = tuple(ids[start : start + max_length])
            chunks.append(TextChunk(tokenizer.decode(window), window, doc_index, chunk_index))
    return chunks


def earlier_windows(
    docs: Sequence[WikiDocument],
    tokenizer: TokenizerLike,
    max_length: int,
    windows: Sequence[TextChunk],
) -> list[list[list[int]]]:
    """Per window of `docs` (a sample of `chunk_documents(docs, ...)`): the token lists of its
    document's windows before it; the documents are cut again to find them. Windows of one
    document get prefixes of one list of the same token lists (`WindowTask` shares their rows)."""
    by_doc: dict[int, list[list[int]]] = {}
    for chunk in chunk_documents(docs, tokenizer, max_length):  # chunk_index counts up per doc
        by_doc.setdefault(chunk.doc_index, []).append(list(chunk.token_ids))
    return [by_doc[w.doc_index][: w.chunk_index] for w in windows]


# ---------------------------------------------------------------- pure core: MMLU


def make_mmlu_question(
    question: str, choices: Sequence[str], answer: int, subject: str
) -> MMLUQuestion:
    if len(choices) != 4 or not 0 <= answer < 4:
        raise ValueError(f"MMLU item needs 4 choices and answer 0-3, got {choices!r}, {answer}")
    return MMLUQuestion(
        text=format_question(question, choices),
        question=question,
        choices=(choices[0], choices[1], choices[2], choices[3]),
        answer=answer,
        answer_letter=LETTERS[answer],
        subject=subject,
    )


def check_subjects(requested: Sequence[str], valid: Sequence[str]) -> None:
    """Raise ValueError naming the closest valid subject for the first unknown one."""
    for subject in requested:
        if subject not in valid:
            close = difflib.get_close_matches(subject, valid, n=1, cutoff=0.0)
            hint = f"did you mean {close[0]!r}?" if close else "no subjects available"
            raise ValueError(f"unknown MMLU subject {subject!r}; {hint} ({len(valid)} valid)")


def sample_items(
    items: list[MMLUQuestion], max_samples: int | None, seed: int
) -> list[MMLUQuestion]:
    """Seeded uniform sample of `max_samples` items, returned in their original order."""
    if max_samples is None or max_samples >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), max_samples))
    return [items[i] for i in keep]


def _check_split(split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(valid)}")


# ---------------------------------------------------------------- adapters: sources


class WikiTextDataSource:
    """Document-level WikiText-2 raw; `path` is a folder with wiki.{train,valid,test}.raw
    (each may instead be compressed as wiki.<split>.raw.xz or .gz, as the repository ships)."""

    name: ClassVar[str] = "wikitext"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path

    def load(self, split: str) -> list[WikiDocument]:
        _check_split(split, list(WIKITEXT_FILES))
        return [make_wiki_document(page) for page in self._pages(split)]

    def _pages(self, split: str) -> list[str]:
        if self.path is None:
            import datasets  # optional dependency: only the hub path needs it

            rows = datasets.load_dataset(*WIKITEXT_HUB, split=split)
            return [row["page"] for row in rows]
        file = Path(self.path) / WIKITEXT_FILES[split]
        if file.is_file():
            return split_wikitext_pages(file.read_text(encoding="utf-8"))
        for suffix, opener in ((".xz", lzma.open), (".gz", gzip.open)):  # the repository's copy
            packed = file.with_name(file.name + suffix)
            if packed.is_file():
                with opener(packed, "rt", encoding="utf-8") as f:
                    return split_wikitext_pages(f.read())
        raise FileNotFoundError(
            f"WikiText split {split!r} needs {file} (or {file.name}.xz): put the original "
            f"wikitext-2-raw-v1 '{file.name}' there, or pass path=None to load "
            f"{WIKITEXT_HUB[0]} from the hub"
        )


class MMLUDataSource:
    """MMLU from the hub or a folder of Hendrycks CSVs (`test/`, `val/`, `dev/`).

    `max_samples` takes a seeded uniform sample (`seed`) kept in subject-sorted order, so a
    small evaluation subset still spans subjects.
    """

    name: ClassVar[str] = "mmlu"

    def __init__(
        self,
        path: Path | None = None,
        subjects: str | Sequence[str] | None = None,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        self.path = path
        self.subjects = [subjects] if isinstance(subjects, str) else subjects
        self.max_samples = max_samples
        self.seed = seed

    def load(self, split: str) -> list[MMLUQuestion]:
        return sample_items(self._load_all(split), self.max_samples, self.seed)

    def dev_examples(self) -> dict[str, list[MMLUQuestion]]:
        """Few-shot pool: every dev item of the selected subjects, grouped by subject."""
        grouped: dict[str, list[MMLUQuestion]] = {}
        for item in self._load_all("dev"):
            grouped.setdefault(item.subject, []).append(item)
        return grouped

    def _load_all(self, split: str) -> list[MMLUQuestion]:
        _check_split(split, list(MMLU_FOLDERS))
        items = self._hub_items(split) if self.path is None else self._local_items(split)
        valid = sorted({item.subject for item in items})
        if self.subjects is not None:
            check_subjects(self.subjects, valid)
            items = [item for item in items if item.subject in self.subjects]
        # Stable sort: subject order, file/hub order within a subject.
        return sorted(items, key=lambda item: item.subject)

    def _hub_items(self, split: str) -> list[MMLUQuestion]:
        import datasets  # optional dependency: only the hub path needs it

        rows = datasets.load_dataset(*MMLU_HUB, split=split)
        return [
            make_mmlu_question(r["question"], r["choices"], int(r["answer"]), r["subject"])
            for r in rows
        ]

    def _local_items(self, split: str) -> list[MMLUQuestion]:
        folder = MMLU_FOLDERS[split]
        files = sorted((Path(self.path) / folder).glob(f"*_{folder}.csv"))
        if not files:
            raise FileNotFoundError(
                f"MMLU split {split!r} needs {Path(self.path) / folder}/<subject>_{folder}.csv: "
                "unpack the Hendrycks data/ folder there, or pass path=None to use cais/mmlu"
            )
        return [item for file in files for item in read_mmlu_csv(file, folder)]


def read_mmlu_csv(file: Path, folder: str) -> list[MMLUQuestion]:
    """Rows of one Hendrycks CSV (no header: question, A, B, C, D, answer letter)."""
    subject = file.name.removesuffix(f"_{folder}.csv")
    with file.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return [
        make_mmlu_question(q, [a, b, c, d], LETTERS.index(letter.strip()), subject)
        for q, a, b, c, d, letter in rows
    ]


DATA_SOURCES: dict[str, type[WikiTextDataSource] | type[MMLUDataSource]] = {
    WikiTextDataSource.name: WikiTextDataSource,
    MMLUDataSource.name: MMLUDataSource,
}


def make_data_source(name: str, path: Path | None = None, **options: Any) -> DataSource:
    """Build a registered source; `options` go to its constructor (e.g. MMLU `subjects`)."""
    if name not in DATA_SOURCES:
        raise ValueError(f"unknown data source {name!r}; valid names: {', '.join(DATA_SOURCES)}")
    return DATA_SOURCES[name](path, **options)
