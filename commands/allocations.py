"""Allocations a user names on the command line and profile files, read as kept counts
(`pruning.allocation` does every conversion).

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
from pruning.allocation import Profile, check_kept, dense_kept, fractions_of, kept_counts
from rl.env import ActionMap, observe

PROFILE_KEY = "profiles"
# a search profile file: {"profiles": [{"target", "kept", "fractions", ...}]}
# env keys that fix how an agent's actions become allocations: taken from its train run
ACTION_KEYS = (
    "reward",
    "target_sparsity",
    "target_step",
    "reference",
    "radius",
    "align",
    "neurons",
)


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


def _profile_entries(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"profile file {path} does not exist; write it with `search`")
    data = yaml.safe_load(path.read_text())
    profiles = data.get(PROFILE_KEY) if isinstance(data, dict) else None
    if not profiles:
        raise ConfigError(f"profile file {path} holds no profiles; write it with `search`")
    return profiles


def _entry_kept(entry: dict, n_layers: int, width: int, align: int, what: str) -> np.ndarray:
    """A profile entry's kept counts as `search` wrote them (`kept`), else its fractions."""
    if "kept" not in entry:
        return kept_counts(check_length(entry["fractions"], n_layers, what), width, align)
    counts = entry["kept"]
    if not isinstance(counts, list) or len(counts) != n_layers:
        got = len(counts) if isinstance(counts, list) else type(counts).__name__
        raise ConfigError(f"{what} needs {n_layers} kept counts (another model?), got {got}")
    try:
        return check_kept(np.asarray(counts), n_layers, width)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def read_profile(
    path: Path,
    shape: tuple[int, int, int],
    target: float | None = None,
    missing_ok: bool = False,
) -> np.ndarray | None:
    """Kept counts [n_layers] of a search profile file at `target` (or its only target);
    shape = (n_layers, width, align). A target the file lacks is an error, or None with
    `missing_ok`."""
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
    return _entry_kept(chosen, *shape, f"profile file {path}")


def read_profiles(path: Path, n_layers: int, width: int, align: int) -> Profile:
    """Every target of a search profile file, as one interpolating `Profile`."""
    entries = sorted(_profile_entries(path), key=lambda p: float(p["target"]))
    what = f"profile file {path}"
    if all("kept" in p for p in entries):
        kept = [_entry_kept(p, n_layers, width, align, what) for p in entries]
        fractions = [fractions_of(k, width) for k in kept]
    else:  # a hand-written profile: fractions as given, interpolated before any rounding
        fractions = [check_length(p["fractions"], n_layers, what) for p in entries]
    try:
        return Profile(np.array([float(p["target"]) for p in entries]), np.stack(fractions))
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def check_length(values: Any, n_layers: int, what: str = "allocation") -> np.ndarray:
    if not isinstance(values, list) or len(values) != n_layers:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise ConfigError(
            f"{what} needs {n_layers} fractions (one per layer; is it for another model?), "
            f"got {got}"
        )
    fractions = np.asarray([_number(v) for v in values], dtype=np.float64)
    bad = np.flatnonzero(~((fractions >= 0) & (fractions <= 1)))
    if len(bad):
        layer = int(bad[0])
        raise ConfigError(f"allocation fraction of layer {layer} is {fractions[layer]}; use [0,1]")
    return fractions


def _spec_fractions(spec: str, n_layers: int) -> np.ndarray:
    if spec.startswith("uniform:"):
        return check_length([_number(spec.removeprefix("uniform:"))] * n_layers, n_layers)
    return check_length([_number(v) for v in spec.split(",")], n_layers)


def parse_allocation(
    spec: str, shape: tuple[int, int, int], target: float | None = None
) -> np.ndarray:
    """Kept counts [n_layers] of an ALLOCATION (`dense`: full width); shape = (n_layers, width,
    align); fractions round to `align`, a profile's kept counts are read as written. ConfigError
    in one line."""
    n_layers, width, align = shape
    spec = spec.strip()
    if spec == "dense":
        return dense_kept(n_layers, width)
    if Path(spec).suffix in {".json", ".yml", ".yaml"}:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"allocation file {spec} does not exist")
        values = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        if isinstance(values, dict) and PROFILE_KEY in values:
            return read_profile(path, shape, target)
        values = values.get("fractions", values) if isinstance(values, dict) else values
        return kept_counts(check_length(values, n_layers), width, align)
    return kept_counts(_spec_fractions(spec, n_layers), width, align)


def agent_env(agent_path: Path, env: EnvConfig) -> EnvConfig:
    """`env` with the action mapping of the train run the agent comes from (ACTION_KEYS of the
    config.yaml beside it: reward mode, targets, reference profile, radius, align, neurons), so
    an agent always runs under the mapping it was trained with; `env` unchanged if the agent has
    no run folder."""
    for folder in list(agent_path.parents)[:3]:  # train_*/agent_final.zip or .../step_N/agent.zip
        path = folder / "config.yaml"
        if path.is_file():
            trained = (yaml.safe_load(path.read_text()) or {}).get("env") or {}
            return env.model_copy(update={k: trained[k] for k in ACTION_KEYS if k in trained})
    return env


def policy_kept(
    agent: Any, obs: np.ndarray, target: float | None, action_map: ActionMap
) -> np.ndarray:
    """Deterministic policy allocations [n, n_layers] for embeddings [n, dim] at `target`."""
    targets = np.full(len(obs), np.nan if target is None else target)
    inputs = observe(obs, targets if action_map.budget else None)
    actions, _ = agent.predict(inputs, deterministic=True)
    return action_map.kept(actions, targets)
