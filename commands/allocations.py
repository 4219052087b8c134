"""Allocations a user names on the command line, profile files, and the baseline allocations.

Specs: `dense`, `uniform:F`, `F1,F2,...` (one prune fraction per layer), a JSON/YAML file with
that list (or {"fractions": [...]}), or a profile file written by `search` (`--target` picks
one of its targets when it holds several).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from config import ConfigError, EnvConfig
from pruning.allocation import Profile, kept_counts, project_to_target, uniform_at_target
from rl.env import ActionMap, observe

PROFILE_KEY = "profiles"
# env keys that fix how an agent's actions become allocations: taken from its train run
ACTION_KEYS = (
    "reward",
    "target_sparsity",
    "target_step",
    "reference",
    "radius",
)  # a search profile file: {"profiles": [{"target", "fractions", ...}]}


ALLOCATION_HELP = "dense | uniform:F | F1,F2,... (one per layer) | file.json/.yml | profile.json"


def add_allocation_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    """The positional ALLOCATION of `score`, `export` and `generate` (parsed by
    `parse_allocation`)."""
    parser.add_argument(
        "allocation", nargs="?", default=default, help=f"{ALLOCATION_HELP} (default: {default})"
    )


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"allocation value {value!r} is not a number") from None


def _read_file(path: Path, what: str) -> Any:
    """A JSON/YAML file's content (YAML is a superset of JSON); ConfigError in one line."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} {path}{where} is not valid JSON/YAML (truncated?)") from exc


def _profile_entries(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"profile file {path} does not exist; write it with `search`")
    data = _read_file(path, "profile file")
    profiles = data.get(PROFILE_KEY) if isinstance(data, dict) else None
    if not profiles or not isinstance(profiles, list):
        raise ConfigError(f"profile file {path} holds no profiles; write it with `search`")
    for i, entry in enumerate(profiles):
        if not (isinstance(entry, dict) and "target" in entry and "fractions" in entry):
            raise ConfigError(
                f"profile file {path}: entry {i} needs 'target' and 'fractions'; "
                "write the file with `search`"
            )
        _number(entry["target"])
    return profiles


def read_profile(
    path: Path, n_layers: int | None, target: float | None = None, missing_ok: bool = False
) -> np.ndarray | None:
    """Fractions [n_layers] of a search profile file at `target` (or its only target); a target
    the file lacks is an error, or None with `missing_ok`."""
    profiles = _profile_entries(path)
    if target is None:
        if len(profiles) > 1:
            have = [p["target"] for p in profiles]
            raise ConfigError(f"profile file {path} holds targets {have}; pick one with --target")
        chosen = profiles[0]
    else:
        matches = [p for p in profiles if abs(float(p["target"]) - target) < 1e-9]
        if not matches and missing_ok:
            return None
        if not matches:
            have = [p["target"] for p in profiles]
            raise ConfigError(f"profile file {path} has no target {target}; it holds {have}")
        chosen = matches[0]
    return check_length(chosen["fractions"], n_layers, f"profile file {path}")


def read_profiles(path: Path, n_layers: int) -> Profile:
    """Every target of a search profile file, as one interpolating `Profile`."""
    entries = sorted(_profile_entries(path), key=lambda p: float(p["target"]))
    fractions = [check_length(p["fractions"], n_layers, f"profile file {path}") for p in entries]
    try:
        return Profile(np.array([float(p["target"]) for p in entries]), np.stack(fractions))
    except ValueError as exc:
        raise ConfigError(f"profile file {path}: {exc}") from None


def check_length(values: Any, n_layers: int | None, what: str = "allocation") -> np.ndarray:
    """Fractions in [0, 1], one per layer (n_layers None: any count, checked before the model
    loads)."""
    if not isinstance(values, list) or len(values) != (n_layers or len(values)) or not values:
        got = len(values) if isinstance(values, list) else type(values).__name__
        count = f"{n_layers} fractions" if n_layers else "fractions"
        raise ConfigError(
            f"{what} needs {count} (one per layer; is it for another model?), got {got}"
        )
    fractions = np.asarray([_number(v) for v in values], dtype=np.float64)
    bad = np.flatnonzero(~((fractions >= 0) & (fractions <= 1)))
    if len(bad):
        layer = int(bad[0])
        raise ConfigError(f"allocation fraction of layer {layer} is {fractions[layer]}; use [0,1]")
    return fractions


def parse_allocation(
    spec: str, n_layers: int | None, target: float | None = None
) -> np.ndarray | None:
    """None for dense, else one prune fraction per layer [n_layers]; ConfigError in one line.
    n_layers None checks all but the layer count (before the model loads)."""
    spec = spec.strip()
    path = Path(spec)
    is_file = path.suffix in {".json", ".yml", ".yaml"}
    if is_file and not path.is_file():
        raise ConfigError(f"allocation file {spec} does not exist")
    values = _read_file(path, "allocation file") if is_file else None
    profile = isinstance(values, dict) and PROFILE_KEY in values
    if target is not None and not profile:
        raise ConfigError(
            f"--target picks a target of a `search` profile file; {spec!r} is not one: "
            "drop --target"
        )
    if spec == "dense":
        return None
    if spec.startswith("uniform:"):
        fraction = _number(spec.removeprefix("uniform:"))
        return check_length([fraction] * (n_layers or 1), n_layers)
    if is_file:
        if profile:
            return read_profile(path, n_layers, target)
        values = values.get("fractions", values) if isinstance(values, dict) else values
        return check_length(values, n_layers)
    return check_length([_number(v) for v in spec.split(",")], n_layers)


def to_kept(fractions: np.ndarray | None, width: int, align: int) -> np.ndarray | None:
    return None if fractions is None else kept_counts(fractions, width, align)


def ends_dense(n_layers: int, n_ends: int = 2) -> np.ndarray:
    """Fraction shape [n_layers] that keeps the first and last `n_ends` layers dense (fewer
    when the model is too shallow to prune anything else)."""
    n_ends = min(n_ends, (n_layers - 1) // 2)
    shape = np.ones(n_layers)
    shape[:n_ends] = 0.0
    shape[n_layers - n_ends :] = 0.0
    return shape


def baseline_kept(name: str, target: float, n_layers: int, width: int, align: int) -> np.ndarray:
    """Static baselines at exactly `target`: 'uniform' or 'ends_dense' (first/last 2 dense)."""
    if name == "uniform":
        return uniform_at_target(target, n_layers, width, align)
    if name == "ends_dense":
        shape = ends_dense(n_layers)
        fractions = np.minimum(shape * target * n_layers / shape.sum(), 1.0)
        return project_to_target(fractions, target, width, align)
    raise ValueError(f"unknown baseline {name!r}")


def agent_env(agent_path: Path, env: EnvConfig) -> tuple[EnvConfig, str | None]:
    """`env` with the action mapping of the train run the agent comes from (ACTION_KEYS of the
    config.yaml beside it: reward mode, targets, reference profile, radius), and None; if the
    agent has no run folder, `env` unchanged and a warning saying so (to print and record)."""
    folders = list(agent_path.parents)[:3]  # train_*/agent_final.zip or .../step_N/agent.zip
    for folder in folders:
        path = folder / "config.yaml"
        if path.is_file():
            trained = (yaml.safe_load(path.read_text()) or {}).get("env") or {}
            return env.model_copy(update={k: trained[k] for k in ACTION_KEYS if k in trained}), None
    keys = ", ".join(f"env.{k}" for k in ACTION_KEYS)
    return env, (
        f"agent {agent_path} has no train run config.yaml beside it: how its actions map to "
        f"allocations ({keys}) is taken from the current config"
    )


def policy_kept(
    agent: Any, obs: np.ndarray, target: float | None, action_map: ActionMap
) -> np.ndarray:
    """Deterministic policy allocations [n, n_layers] for embeddings [n, dim] at `target`."""
    targets = np.full(len(obs), np.nan if target is None else target)
    inputs = observe(obs, targets if action_map.budget else None)
    actions, _ = agent.predict(inputs, deterministic=True)
    return action_map.kept(actions, targets)


def mean_profile(kept: np.ndarray, target: float | None, action_map: ActionMap) -> np.ndarray:
    """The same allocation for every item: the mean fractions of `kept` [n, L], on target."""
    fractions = 1.0 - kept.mean(axis=0) / action_map.width
    if target is None:
        return kept_counts(fractions, action_map.width, action_map.align)
    return project_to_target(fractions, target, action_map.width, action_map.align)
