from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaForCausalLM,
    PretrainedConfig,
)

from commands.allocations import mean_profile, policy_kept
from config import load_config
from data.sources import WikiTextDataSource
from export.hf import narrow_state_dict, removed_mlp_parameters, size_of
from main import main
from pruning.allocation import kept_counts, project_to_target
from pruning.prunable_llm import PrunableLLM
from rl.env import ActionMap
from scoring.metrics import PerplexityCalculator
from tests.fixtures import D_FF, N_LAYERS, fails_cleanly, make_tiny_project, runs, tiny_llama

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 32  # of the tiny project's LLM
ENCODER_DIM = 16


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("tiny"))


def export(config: Path, *argv: str) -> dict:
    before = set(runs(config))
    assert main(["export", "--config", str(config), *argv]) == 0
    (run,) = set(runs(config)) - before
    return json.loads((run / "export.json").read_text())


def reference_pruned(config: Path, kept: list[int]) -> PrunableLLM:
    """The source model pruned in memory by PrunableLLM: what the export must equal."""
    cfg = yaml.safe_load(config.read_text())
    model = AutoModelForCausalLM.from_pretrained(cfg["model"]["llm"], dtype=torch.float32).eval()
    orderings = torch.tensor(
        json.loads(Path(cfg["env"]["importance_file"]).read_text())["orderings"]
    )
    llm = PrunableLLM(model, orderings)
    ranks = torch.argsort(orderings, dim=1)  # [n_layers, d_ff] rank of each original neuron
    llm.prune(lambda layer: ranks[layer] < kept[layer])
    return llm


def test_round_trip_equal_logits_and_generate(project: Path) -> None:
    result = export(project, "0.5,0.125")
    assert result["kept"] == [32, 56]  # (1 - f) * 64 rounded to multiples of 8
    folder = Path(result["model_dir"])
    expected = {"config.json", "generation_config.json", "model.safetensors"}
    expected |= {"modeling_pruned_llama.py", "tokenizer.json", "tokenizer_config.json"}
    assert expected <= {p.name for p in folder.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "PrunedForCausalLM"
    assert model.config.model_type == "pruned_llama"
    assert [layer.mlp.gate_proj.out_features for layer in model.model.layers] == [32, 56]
    assert model.config.pruning["allocation"] == {"spec": "0.5,0.125", "fractions": [0.5, 0.125]}
    assert model.config.pruning["importance_file"].endswith("importance.json")
    ids = torch.randint(4, 30, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = reference_pruned(project, result["kept"])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    prompt = tokenizer("the game of", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 5)
    assert torch.equal(out, ref.generate(**prompt, max_new_tokens=5, do_sample=False))


def test_dense_export_equals_source(project: Path) -> None:
    result = export(project, "dense")
    model = AutoModelForCausalLM.from_pretrained(result["model_dir"], trust_remote_code=True)
    source = LlamaForCausalLM.from_pretrained(yaml.safe_load(project.read_text())["model"]["llm"])
    ids = torch.arange(4, 20)[None]
    with torch.no_grad():  # neurons are reordered; the function is the same
        torch.testing.assert_close(model(ids).logits, source(ids).logits, rtol=0, atol=1e-6)
    assert result["before"] == result["after"] and result["mlp_sparsity"] == 0.0


def test_sizes_fall_by_the_pruned_mlp_share(project: Path) -> None:
    result = export(project, "uniform:0.5")
    kept = result["kept"]
    assert kept == [32, 32] and result["mlp_sparsity"] == 0.5
    removed = removed_mlp_parameters(HIDDEN, D_FF, kept)
    assert removed == 3 * 32 * 2 * 32 == 6144
    assert result["before"]["parameters"] - result["after"]["parameters"] == removed
    assert result["before"]["bytes"] - result["after"]["bytes"] == 4 * removed  # float32
    assert result["removed"] == {"parameters": removed, "bytes": 4 * removed}
    assert removed / result["mlp_parameters_before"] == result["mlp_sparsity"]
    model = AutoModelForCausalLM.from_pretrained(result["model_dir"], trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == result["after"]["parameters"]
    assert result["before"]["parameters"] == 20512  # the tiny project's source model


def test_narrow_with_orderings_equals_sorted_prefix() -> None:
    model = tiny_llama()
    orderings = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(i))
                             for i in range(3)])  # fmt: skip
    kept = [8, 40, 64]
    direct = narrow_state_dict(model.state_dict(), kept, orderings)
    llm = PrunableLLM(model, orderings)  # sorts in place
    prefix = narrow_state_dict(llm.wrapped.state_dict(), kept)
    assert direct.keys() == prefix.keys()
    assert all(torch.equal(direct[k], prefix[k]) for k in direct)
    assert direct["model.layers.0.mlp.down_proj.weight"].shape == (32, 8)
    assert direct["model.layers.0.mlp.down_proj.weight"].is_contiguous()
    sizes = size_of(model.state_dict()), size_of(direct)
    assert sizes[0].parameters - sizes[1].parameters == removed_mlp_parameters(32, 64, kept)


def test_size_counts_tied_weights_once() -> None:
    model = tiny_llama(tie_word_embeddings=True)
    untied = sum(t.numel() for t in model.state_dict().values())
    assert size_of(model.state_dict()).parameters == untied - 128 * 32


# ---- every architecture with mlp.{gate,up,down}_proj ------------------------------------------


def arch_config(model_type: str) -> PretrainedConfig:
    """A tiny random config of `model_type` for the fixtures' 36-word tokenizer."""
    common = dict(
        vocab_size=36, hidden_size=32, intermediate_size=D_FF, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=3,
    )  # fmt: skip
    extra: dict[str, dict] = {
        "llama": {},
        "qwen2": {},  # q/k/v biases
        "mistral": {"sliding_window": 8},
        "gemma3_text": {
            "head_dim": 8,
            "sliding_window": 8,  # GELU, scaled embeddings, 4 norms
            "layer_types": ["sliding_attention", "full_attention"],
        },  # fmt: skip
    }
    return AutoConfig.for_model(model_type, **common, **extra[model_type])


def randomise_vectors(folder: Path) -> None:
    """Biases and norm weights start at 0 or 1; random values make a dropped one visible."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
    model.save_pretrained(folder)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral", "gemma3_text"])
def test_export_keeps_the_source_architecture(
    model_type: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = make_tiny_project(tmp_path, arch_config(model_type))
    randomise_vectors(tmp_path / "llm")
    result = export(config, "0.5,0.125")
    folder = Path(result["model_dir"])
    modeling = f"modeling_pruned_{model_type}.py"
    assert modeling in {p.name for p in folder.iterdir()}
    written = json.loads((folder / "config.json").read_text())
    assert written["model_type"] == f"pruned_{model_type}"
    assert written["auto_map"]["AutoModelForCausalLM"] == f"{modeling[:-3]}.PrunedForCausalLM"
    assert "quantization_config" not in written
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    source_class = type(AutoModelForCausalLM.from_config(arch_config(model_type)))
    assert isinstance(model, source_class)  # a subclass of the source's own class
    assert [layer.mlp.gate_proj.out_features for layer in model.model.layers] == [32, 56]
    ids = torch.randint(4, 30, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = reference_pruned(config, result["kept"])
    with torch.no_grad():
        theirs, ours = model(ids).logits, ref(ids).logits
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer("the game of", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, ref.generate(**prompt, max_new_tokens=6, do_sample=False))
    # the project's own `generate` (global neurons: the same kept neurons) decodes the same
    argv = ["--config", str(config), "0.5,0.125", "--set", "env.neurons=global"]
    assert main(["generate", *argv, "--prompt", "the game of", "--max-new-tokens", "6"]) == 0
    run = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run"])
    tokens = json.loads((run / "generate.json").read_text())["results"][0]["tokens"]
    assert tokens == out[0, prompt["input_ids"].shape[1] :].tolist()[: len(tokens)]
    # and `score` of the allocation equals the export scored by the same metric code
    assert main(["score", *argv, "--limit", "2"]) == 0
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = load_config(config)
    docs = WikiTextDataSource(Path(str(cfg.data.wikitext_path))).load("test")[:2]
    calc = PerplexityCalculator(model, tokenizer, cfg.env.max_length, "bos", batch_size=1)
    theirs = calc.evaluate(docs)["word_perplexity"]
    assert theirs == pytest.approx(ours["word_perplexity"], rel=1e-5)


# ---- budget agents -----------------------------------------------------------------------------


def test_policy_mean_profile_pins_numbers() -> None:
    actions = np.array(
        [[-1.0, 0.0, 1.0, 0.0], [-1.0, 1.0, 1.0, -1.0]]
    )  # fractions 0,.5,1,.5 / 0,1,1,0
    seen = []

    class Agent:
        def predict(self, obs: np.ndarray, deterministic: bool) -> tuple[np.ndarray, None]:
            assert deterministic
            seen.append(obs)
            return actions, None

    action_map = ActionMap(4, 64, 8, (0.5, 0.5))
    kept = mean_profile(policy_kept(Agent(), np.zeros((2, 3)), 0.5, action_map), 0.5, action_map)
    assert seen[0].dtype == np.float32 and seen[0].shape == (2, 4)
    assert np.all(seen[0][:, -1] == 0.5)
    per_item = project_to_target((actions + 1) / 2, 0.5, 64, 8)
    assert per_item.tolist() == [[64, 32, 0, 32], [64, 0, 0, 64]]
    assert kept.tolist() == [64, 16, 0, 48] and kept.sum() == 128  # on target: half of 4 x 64


class _BudgetEnv(gym.Env):
    """Only the spaces matter: a budget agent's observation is [embedding, target]."""

    def __init__(self, obs_dim: int, n_layers: int) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n_layers,), np.float32)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple:
        del options
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action: np.ndarray) -> tuple:
        del action
        return np.zeros(self.observation_space.shape, np.float32), 0.0, True, False, {}


def make_agent(folder: Path, target: object, obs_dim: int = ENCODER_DIM + 1) -> Path:
    from stable_baselines3 import SAC

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"env": {"target_sparsity": target}}))
    agent = SAC("MlpPolicy", _BudgetEnv(obs_dim, N_LAYERS), policy_kwargs={"net_arch": [8]})
    agent.save(folder / "agent_final.zip")
    return folder / "agent_final.zip"


def test_agent_export_is_on_target(project: Path, tmp_path: Path) -> None:
    agent = make_agent(tmp_path / "train_budget", [0.2, 0.6])
    result = export(project, "--agent", str(agent), "--target", "0.5")
    assert result["mlp_sparsity"] == 0.5 and sum(result["kept"]) == 64
    assert result["allocation"]["agent"] == str(agent) and result["allocation"]["target"] == 0.5
    model = AutoModelForCausalLM.from_pretrained(result["model_dir"], trust_remote_code=True)
    assert model.config.intermediate_sizes == result["kept"]


def test_bad_agents(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["export", "--config", str(project)]
    before = runs(project)
    ranged = make_agent(tmp_path / "ranged", [0.2, 0.6])
    fails_cleanly(capsys, [*base, "--agent", str(ranged), "--target", "0.7"], "outside the range")
    fixed = make_agent(tmp_path / "fixed", 0.3)
    fails_cleanly(capsys, [*base, "--agent", str(fixed), "--target", "0.5"], "[0.3, 0.3]")
    tradeoff = make_agent(tmp_path / "tradeoff", None)
    fails_cleanly(capsys, [*base, "--agent", str(tradeoff), "--target", "0.3"], "trade-off agent")
    other = make_agent(tmp_path / "other", 0.3, obs_dim=9)
    fails_cleanly(capsys, [*base, "--agent", str(other), "--target", "0.3"], "was trained for")
    fails_cleanly(capsys, [*base, "--agent", str(ranged)], "go together")
    fails_cleanly(
        capsys, [*base, "--agent", str(tmp_path / "no.zip"), "--target", "0.3"], "not found"
    )
    assert runs(project) == before


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["0.1,0.2,0.3"], f"needs {N_LAYERS} fractions"),
        (["uniform:1.5"], "use [0,1]"),
        ([], "give an ALLOCATION or --agent"),
        (["dense", "--agent", "a.zip", "--target", "0.3"], "one of the two"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    project: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    fails_cleanly(capsys, ["export", "--config", str(project), *extra], message, project)


def test_output_folder_needs_force(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["export", "--config", str(project), "uniform:0.25", "--output", str(out)]
    fails_cleanly(capsys, argv, "pass --force", project)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = export(project, *argv[3:], "--force")
    assert result["model_dir"] == str(out) and not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no temporary folders


def test_kept_counts_match_score_rounding() -> None:
    assert kept_counts([0.5, 0.125], D_FF, 8).tolist() == [32, 56]


# ---- the benchmark script ----------------------------------------------------------------------


def test_bench_export_tiny(tmp_path: Path) -> None:
    from bench.bench_export import main as bench_main

    out = tmp_path / "bench.json"
    assert bench_main(["--tiny", "--sparsities", "0.5", "--aligns", "8", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["dense", "sparsity 0.5 align 8"]
    dense, half = rows
    assert dense["ideal_decode"] == 1.0 and dense["prefill_b1_tok_s"] > 0
    assert half["mlp_widths"] == [64] and half["decode_b2_tok_s"] > 0 and "error" not in half
    # tiny arch: 3 layers, hidden 64, width 128 -> 64; decode reads 3 * 64 * 64 * 3 fewer weights
    assert half["weights_per_token"] == dense["weights_per_token"] - 3 * 3 * 64 * 64
    assert half["ideal_decode"] == pytest.approx(127424 / 90560)


# ---- lm-evaluation-harness loads the export and scores what `score` scores -----------------------


def lm_eval_word_perplexity(model_dir: Path, pages: list[str], max_length: int, tmp: Path) -> float:
    """lm-eval's own `wikitext` task (only the dataset swapped for `pages`) through model='hf'."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = tmp / "test.jsonl"
    data.write_text("".join(json.dumps({"page": page}) + "\n" for page in pages))
    task_yaml = tmp / "wikitext_local.yaml"
    override = {
        "include": str(Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "wikitext.yaml"),
        "task": "wikitext_local",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp / "hf")},
        "training_split": None,
        "validation_split": None,
    }
    task_yaml.write_text(yaml.safe_dump(override))
    tasks = TaskManager().load([str(task_yaml)])["tasks"]
    args = f"pretrained={model_dir},trust_remote_code=True,max_length={max_length},dtype=float32"
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=args,
        device="cuda" if torch.cuda.is_available() else "cpu",
        tasks=list(tasks.values()),
        bootstrap_iters=0,
    )
    return float(out["results"]["wikitext_local"]["word_perplexity,none"])


@pytest.mark.slow
def test_lm_eval_scores_the_export_as_score_does(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("lm_eval")
    from data.sources import WikiTextDataSource

    allocation, n_docs = "0.5,0.125", 2
    result = export(project, allocation)
    capsys.readouterr()
    assert main(["score", "--config", str(project), allocation, "--limit", str(n_docs)]) == 0
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = yaml.safe_load(project.read_text())
    docs = WikiTextDataSource(Path(cfg["data"]["wikitext_path"])).load("test")[:n_docs]
    max_length = cfg["env"]["max_length"]
    theirs = lm_eval_word_perplexity(
        Path(result["model_dir"]), [d.original_text for d in docs], max_length, tmp_path
    )
    assert ours["sparsity"] == result["mlp_sparsity"]
    assert theirs == pytest.approx(ours["word_perplexity"], rel=1e-6)  # measured: 3.9e-8
