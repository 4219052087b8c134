"""A whole tiny project on disk: random 2-layer LLM and encoder, a word-level tokenizer,
four-document WikiText files, an importance file and a config that points at all of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

WORDS = (
    "the a of and to in is was for on with as by at from it he she they game song war city".split()
)
N_LAYERS, D_FF = 2, 64


def tiny_llama(seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    """A random 3-layer LLaMA (hidden 32, MLP width 64), eval mode; overrides go to LlamaConfig."""
    torch.manual_seed(seed)
    kwargs: dict[str, object] = dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(LlamaConfig(**(kwargs | overrides))).eval()


def save_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS, "=", ",", "."])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.save_pretrained(folder)
    return fast


def wiki_page(title: str, n: int, seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    words = [WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=gen).tolist()]
    lines = [" ".join(words[i : i + 12]) + " . " for i in range(0, n, 12)]
    return f" = {title} = \n \n" + "".join(f" {line}\n" for line in lines) + " \n"


def write_mmlu(folder: Path) -> None:
    """Two subjects x three questions per split, in the original CSV layout (no header)."""
    for split in ("test", "dev", "val"):
        (folder / split).mkdir(parents=True)
        for subject in ("war_history", "song_studies"):
            rows = [
                f'"the {w} of {subject.split("_")[0]} ,",the,a,of,"and, to",{"ABCD"[i % 4]}\n'
                for i, w in enumerate(WORDS[:3])
            ]
            (folder / split / f"{subject}_{split}.csv").write_text("".join(rows))


def make_tiny_project(
    root: Path, llm_cfg: PretrainedConfig | None = None, pages: int = 4, **overrides: object
) -> Path:
    """Write everything under `root`; returns the config path. `llm_cfg` swaps in another
    architecture (random weights) for benchmarks."""
    torch.manual_seed(0)
    llm_dir, enc_dir, data_dir = root / "llm", root / "encoder", root / "wiki"
    tok = save_tokenizer(llm_dir)
    llm_cfg = llm_cfg or LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=D_FF, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(llm_cfg).save_pretrained(llm_dir)  # any architecture
    n_layers, d_ff = llm_cfg.num_hidden_layers, llm_cfg.intermediate_size
    save_tokenizer(enc_dir)
    enc_cfg = BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=256,
    )  # fmt: skip
    BertModel(enc_cfg).save_pretrained(enc_dir)
    data_dir.mkdir()
    for split, seed in (("test", 0), ("valid", 10), ("train", 20)):
        text = "".join(wiki_page(f"Doc {i}", 30 + 25 * i, seed + i) for i in range(pages))
        (data_dir / f"wiki.{split}.raw").write_text(" \n" + text)
    write_mmlu(root / "mmlu")
    gen = torch.Generator().manual_seed(1)
    orderings = [torch.randperm(d_ff, generator=gen).tolist() for _ in range(n_layers)]
    importance = root / "importance.json"
    importance.write_text(
        json.dumps(
            {
                "model": "tiny",
                "criterion": "mean_abs_activation",
                "num_samples": 1,
                "num_tokens": 1,
                "date": "2026-01-01",
                "n_layers": n_layers,
                "intermediate_size": d_ff,
                "orderings": orderings,
            }
        )  # fmt: skip
    )
    config = {
        "model": {"llm": str(llm_dir), "encoder": str(enc_dir), "device": "cpu"},
        "data": {"wikitext_path": str(data_dir), "mmlu_path": str(root / "mmlu"),
                 "embedding_cache": str(root / "cache")},
        "env": {"max_length": 16, "importance_file": str(importance), "batch_size": 4},
        "sac": {"learning_starts": 4, "batch_size": 8, "buffer_size": 256, "net_arch": [8]},
        "train": {"total_steps": 8, "checkpoint_every": 4, "n_envs": 2,
                  "runs_dir": str(root / "runs")},
        "importance": {"num_samples": 4, "max_length": 16, "output_dir": str(root / "stats")},
    }  # fmt: skip
    for key, value in overrides.items():  # section__key=value
        section, _, leaf = key.partition("__")
        config[section][leaf] = value
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def runs(config: Path) -> list[Path]:
    """Run folders of the tiny project whose config is `config`."""
    return sorted((config.parent / "runs").glob("*"))


def fails_cleanly(
    capsys: pytest.CaptureFixture, argv: list[str], message: str, project: Path | None = None
) -> None:
    """Exit code 2, one line naming the problem, no traceback; with `project` (its config),
    also no run folder written."""
    from main import main  # the CLI under test; imported late so fixtures stay light

    before = None if project is None else runs(project)
    assert main(argv) == 2
    if project is not None:
        assert runs(project) == before  # nothing written
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


def last_json(capsys: pytest.CaptureFixture) -> dict:
    """The final JSON line a command printed."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])
