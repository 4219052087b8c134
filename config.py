"""Typed configuration: `config.yml` (+ an optional preset layered on it) -> pydantic models.

A preset names its base with `base: <path relative to the preset>` and lists only the keys it
overrides. `--set a.b=c` overrides apply last; values are parsed as YAML
(`--set sac.net_arch=[64,64]`).
Every failure is a `ConfigError` (a `ValueError`) whose one-line message names the key and the fix.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A config problem, reported as one line that names the key and the fix."""


class _Section(BaseModel):
    # inf and NaN pass every range check (learning_rate=.inf > 0): no field can use them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Keys that once existed, with why they went: an old config naming one gets this reason.
REMOVED_KEYS = {
    ("sac", "gamma"): "every transition of the one-step bandit is terminal, so the discount "
    "multiplies nothing",
    ("sac", "tau"): "every transition of the one-step bandit is terminal, so the target critics "
    "it soft-updates are never read",
}


class ModelConfig(_Section):
    llm: str  # hub id | local dir | file inside an installed package: "package:<dist>/<path>"
    encoder: str  # same syntax as llm
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device_map: Literal["auto"] | None = None  # "auto": spread a too-large LLM over all GPUs
    # llm: "parts:<dist>{1..N}==<version>" (packages, each shipping data/<part files>) or
    # "parts:<folder>/" (its files in name order): the parts concatenate into one GGUF
    llm_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")  # of the whole GGUF
    llm_bytes: int | None = Field(default=None, gt=0)  # size of the whole GGUF
    # joined parts and de-quantized GGUFs (safetensors) are kept here; None = de-quantize each time
    cache_dir: str | None = "cache/models"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value == "auto":
            return value
        import torch  # torch's own parser knows every device type of this build

        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"model.device={value!r} is not a torch device; use auto, cpu, cuda or cuda:N"
            ) from None
        return value


MIXED_KINDS = ("wikitext", "code", "mmlu")  # kinds of input a `mixed` task draws from


class DataConfig(_Section):
    dataset: Literal["wikitext", "mmlu", "mixed"] = "wikitext"
    wikitext_path: str | None = None  # folder with wiki.{train,valid,test}.raw; None = the hub
    mmlu_path: str | None = None  # folder with MMLU test/ dev/ val/ CSVs; None = the hub
    train_split: str = "validation"  # split the agent trains on
    eval_split: str = "test"  # split `eval` and `score` report on
    subjects: list[str] | None = None  # MMLU subject filter; None = all 57
    max_samples: int | None = Field(default=None, gt=0)  # cap on items per split
    embedding_cache: str | None = "cache/embeddings"  # cached encoder outputs; None = off
    embedding_batch_size: int = Field(default=32, gt=0)
    # mixed only: kind -> weight in the overall figure and in training draws (weight 0 drops it)
    kinds: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(MIXED_KINDS, 1.0))
    code_path: str | None = None  # code corpus .json.xz; None = the shipped CPython modules

    @property
    def path(self) -> str | None:
        """Local folder of the configured dataset (None = the hub)."""
        return self.wikitext_path if self.dataset == "wikitext" else self.mmlu_path

    @property
    def active_kinds(self) -> dict[str, float]:
        """Kinds of a mixed task with a positive weight, in MIXED_KINDS order."""
        return {k: self.kinds[k] for k in MIXED_KINDS if self.kinds.get(k, 0.0) > 0}

    @model_validator(mode="after")
    def _check_kinds(self) -> DataConfig:
        for kind, weight in self.kinds.items():
            if kind not in MIXED_KINDS:
                close = difflib.get_close_matches(kind, MIXED_KINDS, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"use {', '.join(MIXED_KINDS)}"
                raise ValueError(f"data.kinds: unknown kind {kind!r}; {hint}")
            if not weight >= 0:  # False for NaN too
                raise ValueError(f"data.kinds.{kind}={weight} is negative; use a weight >= 0")
        if not self.active_kinds:
            raise ValueError("data.kinds gives every kind weight 0; give one a positive weight")
        return self


class EnvConfig(_Section):
    max_length: int = Field(default=2048, gt=1)  # tokens per window (LLM context used for scoring)
    # budget: each episode gets a target sparsity (a number, or [low, high] sampled per episode)
    # and the reward is quality only; tradeoff: the policy picks the sparsity, the reward trades
    # quality_weight of quality against sparsity
    reward: Literal["budget", "tradeoff"] = "budget"
    target_sparsity: float | list[float] | None = Field(default_factory=lambda: [0.1, 0.5])
    quality_weight: float = Field(default=0.5, ge=0.0, le=1.0)  # tradeoff only: 1 = only quality
    importance_file: str | None = None  # neuron orderings; None = importance command output
    align: int = Field(default=8, gt=0)  # kept neurons per layer rounded to a multiple of this
    prefix_token: Literal["bos", "eos"] = "bos"  # first-window context token; lm-eval uses BOS
    mmlu_mode: Literal["letter", "choice_text"] = "letter"  # lm-eval's acc, or the seed's scoring
    mmlu_num_fewshot: int = Field(default=0, ge=0, le=5)  # dev-split examples in MMLU prompts
    batch_size: int = Field(default=8, gt=0)  # windows per forward pass when scoring
    # which neurons a layer keeps: global = the importance file's top kept[l] for every input;
    # context = the top kept[l] by importance.criterion on the dense model's activations over the
    # input's own context (earlier windows of its document, an MMLU prompt), never its targets
    neurons: Literal["global", "context"] = "global"
    # budget mode: draw targets from the grid low, low + step, ..., high (null = continuously);
    # with a reference, each (item, grid target) reference metric is scored once and cached
    target_step: float | None = Field(default=None, gt=0)
    # budget mode: a `search` profile.json. The policy then acts as a per-input deviation of at
    # most `radius` per layer around the profile at the episode's target (a = 0 is the profile),
    # and is paid relative to it on the same item: -log(ppl / ppl_reference), c - c_reference
    # (with levers too: the reference at the episode's target, whatever budget the input takes)
    reference: str | None = None
    # 0: no per-layer actions at all (the reference's shape for every input; with the budget or
    # blend lever the policy then decides only those)
    radius: float = Field(default=0.2, ge=0, le=1)
    # what a per-input policy decides and sees beyond per-layer fractions (rl/levers.py):
    # budget: its own total sparsity, target +- budget_radius, the mean held on target by a price
    # (eval: projected over the items); blend: per layer, context vs global neuron ranking;
    # stats: the dense model's per-layer statistics of its context in the observation
    levers: list[Literal["budget", "blend", "stats"]] = Field(default_factory=list)
    budget_radius: float = Field(default=0.1, gt=0, le=0.5)
    price_lr: float = Field(default=0.05, ge=0)  # dual ascent step of the price on sparsity

    @property
    def targets(self) -> tuple[float, float] | None:
        """(low, high) of the per-episode target sparsity; None in trade-off mode."""
        t = self.target_sparsity
        if self.reward == "tradeoff" or t is None:
            return None
        if isinstance(t, float | int):
            return (float(t), float(t))
        return (float(t[0]), float(t[-1]))

    @model_validator(mode="after")
    def _check_targets(self) -> EnvConfig:
        if self.reward == "budget":
            if self.target_sparsity is None:
                raise ValueError(
                    "env.reward=budget needs env.target_sparsity (e.g. 0.3 or [0.1, 0.5]); "
                    "or set env.reward=tradeoff"
                )
            low, high = self.targets
            pair = isinstance(self.target_sparsity, float | int) or len(self.target_sparsity) == 2
            if not (pair and 0.0 < low <= high < 1.0):
                raise ValueError(
                    f"env.target_sparsity={self.target_sparsity} must lie in (0, 1) with "
                    "low <= high; e.g. 0.3 or [0.1, 0.5]"
                )
            steps = (high - low) / self.target_step if self.target_step else 0.0
            if abs(steps - round(steps)) > 1e-6:
                raise ValueError(
                    f"env.target_step={self.target_step} must divide the target range "
                    f"[{low}, {high}]; e.g. 0.1 for [0.1, 0.5]"
                )
        elif self.reference is not None:
            raise ValueError("env.reference needs env.reward=budget; or set env.reference=null")
        if self.levers and self.reward != "budget":
            raise ValueError(
                f"env.levers={self.levers} needs env.reward=budget; or set env.levers=[]"
            )
        decides = {"budget", "blend"} & set(self.levers)
        if self.radius == 0 and (self.reference is None or not decides):
            raise ValueError(
                "env.radius=0 leaves the policy no per-layer actions: it needs env.reference and "
                "env.levers with budget or blend; or set env.radius=0.2"
            )
        if {"blend", "stats"} & set(self.levers) and self.neurons != "context":
            raise ValueError(
                f"env.levers={self.levers} reads context orderings: set env.neurons=context"
            )
        return self


class SACConfig(_Section):
    learning_rate: float = Field(default=3e-4, gt=0)
    buffer_size: int = Field(default=100_000, gt=0)
    learning_starts: int = Field(default=100, ge=0)  # random-action steps before updates start
    batch_size: int = Field(default=256, gt=0)
    train_freq: int = Field(default=1, gt=0)
    gradient_steps: int = Field(default=1, ge=-1)
    ent_coef: str | float = "auto_0.02"  # "auto_<init>" learns it; a number fixes it
    target_entropy: str | float = "auto"
    # actor and critic hidden widths; at least one layer: a critic linear in the action only
    # ever prefers an extreme prune fraction
    net_arch: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [256, 256], min_length=1
    )
    init_action: float = 0.2  # untrained actor's mean fraction, in (0, 1): atanh(2x - 1) is set

    @field_validator("init_action")
    @classmethod
    def _open_unit_interval(cls, value: float) -> float:
        if not 0.0 < value < 1.0:  # False for NaN too
            raise ValueError(
                f"sac.init_action={value} must be strictly between 0 and 1 (the actor's output "
                "bias is atanh(2x - 1), infinite at 0 and 1); use e.g. 0.01 or 0.99"
            )
        return value

    @field_validator("ent_coef")
    @classmethod
    def _ent_coef(cls, value: str | float) -> str | float:
        if not isinstance(value, str) and not value > 0:
            raise ValueError(
                f"sac.ent_coef={value} must be positive (it weighs the entropy bonus); "
                "e.g. 0.1 or auto_0.02"
            )
        if isinstance(value, str) and value != "auto":
            number = value.removeprefix("auto_")
            try:
                ok = value.startswith("auto_") and 0 < float(number) < float("inf")
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"sac.ent_coef={value!r} is not 'auto', 'auto_<initial value>' or a number; "
                    "e.g. auto_0.02 or 0.1"
                )
        return value

    @field_validator("target_entropy")
    @classmethod
    def _target_entropy(cls, value: str | float) -> str | float:
        if isinstance(value, str) and value != "auto":
            raise ValueError(
                f"sac.target_entropy={value!r} is not 'auto' or a number; e.g. auto (= minus the "
                "number of layers) or -10"
            )
        return value


class TrainConfig(_Section):
    total_steps: int = Field(default=10_000, gt=0)  # env steps (one = prune + score)
    checkpoint_every: int = Field(default=500, gt=0)  # steps between checkpoints (agent + buffer)
    n_envs: int = Field(default=1, gt=0)  # environments stepped together (batched evaluation)
    # one worker process per entry (GPU index, or "cpu"), each scoring n_envs episodes per step;
    # "auto": every visible GPU; None: in-process
    devices: list[int | Literal["cpu"]] | Literal["auto"] | None = None
    runs_dir: str = "runs"  # every command writes runs/<command>_<UTC time>/
    eval_after: bool = False  # run `eval` on the final agent when training ends


class EvalConfig(_Section):
    agent: str | None = None  # agent .zip; None = final agent of the newest train run in runs_dir
    limit: int | None = Field(default=None, gt=0)  # evaluate only the first N items
    targets: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])  # budget agents
    profile: str | None = None  # `search` profile.json: the searched static arm at each target
    per_window: bool = True  # also let the policy decide per rolling window (WikiText)
    # false: only the policy's arms (the static ones from an `eval --agent none` of the same items)
    static: bool = True
    # the static baselines scored beside the profile (`[]`: only the profile and policy arms)
    baselines: list[Literal["uniform", "ends_dense"]] = Field(
        default_factory=lambda: ["uniform", "ends_dense"]
    )
    # mixed task: fit per-input budgets on this many training items of each kind
    # (arms `fitted_input` and `fitted_within_kind`)
    fit_items: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_targets(self) -> EvalConfig:
        bad = [t for t in self.targets if not 0.0 < t < 1.0]
        if bad or not self.targets:
            raise ValueError(f"eval.targets={self.targets} must be numbers in (0, 1), e.g. [0.3]")
        return self


class ImportanceConfig(_Section):
    criterion: Literal["mean_abs_activation", "wanda"] = "mean_abs_activation"
    split: str = "validation"  # calibration split of the configured dataset
    num_samples: int = Field(default=64, gt=0)  # calibration windows
    max_length: int = Field(default=512, gt=1)  # tokens per calibration window
    batch_size: int = Field(default=4, gt=0)
    output_dir: str = "grouping_statistics"
    # json: readable (the shipped SmolLM2 files); npz: int16 orderings + float32 scores, compressed
    format: Literal["json", "npz"] = "json"


class SearchConfig(_Section):
    """`search`: EvoPress-style (1 + offspring) evolution of one static allocation per target."""

    targets: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])
    start: Literal["uniform", "ends_dense"] = "uniform"  # the parent every target starts from
    generations: int = Field(default=100, ge=0)  # parent updates tried per target (0: the start)
    offspring: int = Field(default=16, gt=0)  # mutants of the parent per generation
    survivors: int = Field(default=2, gt=0)  # best mutants on the subset, rescored on all windows
    subset: int = Field(default=16, gt=0)  # calibration windows of the cheap first stage
    calibration: int = Field(default=128, gt=0)  # windows: a seeded sample of the training split
    mutation_blocks: int = Field(default=4, gt=0)  # a mutation moves 1..this many align-blocks
    max_evaluations: int | None = Field(default=None, gt=0)  # candidate scorings; None = no cap

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        bad = [t for t in self.targets if not 0.0 < t < 1.0]
        if bad or not self.targets:
            raise ValueError(f"search.targets={self.targets} must be numbers in (0, 1), e.g. [0.3]")
        if self.survivors > self.offspring:
            raise ValueError(
                f"search.survivors={self.survivors} exceeds search.offspring={self.offspring}; "
                "keep survivors <= offspring"
            )
        return self


class Config(_Section):
    seed: int = Field(default=0, ge=0, lt=2**32)  # NumPy's seed range
    model: ModelConfig
    data: DataConfig = DataConfig()
    env: EnvConfig = EnvConfig()
    sac: SACConfig = SACConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    importance: ImportanceConfig = ImportanceConfig()
    search: SearchConfig = SearchConfig()

    @model_validator(mode="after")
    def _check_devices(self) -> Config:
        if self.train.devices is not None and self.model.device_map is not None:
            raise ValueError(
                "train.devices gives each GPU its own model copy, model.device_map spreads one "
                "model over all GPUs: set one of them to null"
            )
        return self

    @model_validator(mode="after")
    def _check_levers(self) -> Config:
        if "stats" in self.env.levers and self.train.devices is not None:
            raise ValueError(
                "env.levers=[stats] extends observations inside the environment, which GPU "
                "workers do not share yet: set train.devices=null or drop stats"
            )
        return self

    @model_validator(mode="after")
    def _check_static(self) -> Config:
        if not self.eval.static and self.data.dataset == "mixed":
            raise ValueError(
                "eval.static=false: the mixed eval matches every arm to the oracle and compares "
                "the policy with the static arms in one run; set eval.static=true"
            )
        every = EvalConfig.model_fields["baselines"].get_default(call_default_factory=True)
        if self.data.dataset == "mixed" and self.eval.baselines != every:
            raise ValueError(
                f"eval.baselines={self.eval.baselines}: the mixed eval ranks the policy against "
                "every static arm; leave eval.baselines at [uniform, ends_dense]"
            )
        return self

    @model_validator(mode="after")
    def _check_fit(self) -> Config:
        if self.eval.fit_items is not None and self.data.dataset != "mixed":
            raise ValueError(
                f"eval.fit_items={self.eval.fit_items} fits per-input budgets on the mixed task "
                "only; set data.dataset=mixed or eval.fit_items=null"
            )
        return self

    @model_validator(mode="after")
    def _check_splits(self) -> Config:
        valid = {
            "wikitext": {"train", "validation", "test"},
            "mmlu": {"test", "validation", "dev"},
            "mixed": {"validation", "test"},  # validation: each kind's training part
        }
        for key in ("train_split", "eval_split"):
            split = getattr(self.data, key)
            if split not in valid[self.data.dataset]:
                raise ValueError(
                    f"data.{key}={split!r} is not a {self.data.dataset} split; "
                    f"use one of {sorted(valid[self.data.dataset])}"
                )
        return self


def resolve_path(path: str | Path) -> Path:
    """A config path: absolute as given, else relative to the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config with an existing file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where} is not valid YAML; fix its syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file, following `base:` links (a preset lists only what it overrides)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"config file {path} includes itself through `base:`; remove the cycle")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    return _merge(load_raw(path.parent / base, (*_seen, path)), data)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=c` strings; the value is parsed as YAML."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE; e.g. --set env.max_length=512")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section; check the key path")
        try:
            node[leaf] = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            raise ConfigError(
                f"--set {item!r}: {text!r} is not a YAML value; e.g. --set sac.net_arch=[64,64]"
            ) from None
    return raw


def _field_names(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Valid keys of the section that holds `loc`'s last element."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(exc: ValidationError) -> str:
    errors = exc.errors()
    # An unknown key first: it is often the misspelling of a key that is reported missing.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "config"
    if err["type"] == "extra_forbidden":
        removed = REMOVED_KEYS.get(tuple(str(p) for p in loc))
        if removed:
            return f"config key {key!r} was removed: {removed}; delete it"
        close = difflib.get_close_matches(str(loc[-1]), _field_names(Config, loc), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "remove it"
        return f"unknown config key {key!r}; {hint}"
    if err["type"] == "missing":
        return f"config key {key!r} is missing; add it to the config file"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":
        return msg
    return f"config key {key!r}: {msg} (got {err.get('input')!r}); fix the value"


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, layer, override and validate a config; raises `ConfigError` with one line."""
    raw = apply_overrides(load_raw(Path(path)), overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
