"""Allocations a user names on the command line and profile files, read as kept counts
(`pruning.allocation` does every conversion).

Specs: `dense`, `uniform:F`, `F1,F2,...` (one prune fraction per layer), a JSON/YAML file with
that list (or {"fractions": [...]}), or a profile file written by `search` (`--target` picks
one of its targets when it holds several).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from config import ConfigError, EnvConfig
from pruning.allocation import Profile, check_kept, dense_kept, fractions_of, kept_counts
from pruning.budgets import BudgetRule
from rl.env import ActionMap, observe

PROFILE_KEY = "profiles"
# a search profile file: {"profiles": [{"target", "kept", "fractions", ...}]}
ENTRY_KEYS = {"kept", "fractions"}  # an entry needs one (`kept` wins: search's own rounding)
# (n_layers, width, align); before the model loads n_layers/width may be unknown (None)
Shape = tuple[int | None, int | None, int]
# env keys that fix how an agent's actions become allocations: taken from its train run
ACTION_KEYS = (
    "reward",
    "target_sparsity",
    "target_step",
    "reference",
    "radius",
    "align",
    "neurons",
    "levers",
    "budget_radius",
)


ALLOCATION_HELP = "dense | uniform:F | F1,F2,... (one per layer) | file.json/.yml | profile.json"


def add_allocation_argument(
    parser: argparse.ArgumentParser, default: str | None, shown: str | None = None
) -> None:
    """The positional ALLOCATION of `score`, `export` and `generate` (parsed by
    `parse_allocation`); `shown`: the default the help names, when `default` is resolved later."""
    shown = shown or default
    parser.add_argument(
        "allocation", nargs="?", default=default, help=f"{ALLOCATION_HELP} (default: {shown})"
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
        if not (isinstance(entry, dict) and "target" in entry and ENTRY_KEYS & entry.keys()):
            raise ConfigError(
                f"profile file {path}: entry {i} needs 'target' and 'fractions' (or 'kept'); "
                "write the file with `search`"
            )
        _number(entry["target"])
    return profiles


def _entry_kept(
    entry: dict, n_layers: int | None, width: int | None, align: int, what: str
) -> np.ndarray | None:
    """A profile entry's kept counts as `search` wrote them (`kept`), else its fractions; None
    (after every check the shape allows) when the width is not known yet."""
    if "kept" not in entry:
        fractions = check_length(entry["fractions"], n_layers, what)
        return None if width is None else kept_counts(fractions, width, align)
    counts = entry["kept"]
    if not isinstance(counts, list) or not counts or len(counts) != (n_layers or len(counts)):
        got = len(counts) if isinstance(counts, list) else type(counts).__name__
        count = f"{n_layers} kept counts" if n_layers else "kept counts"
        raise ConfigError(f"{what} needs {count} (another model?), got {got}")
    if width is None:  # the range [0, width] is checked once the width is known
        return None
    try:
        return check_kept(np.asarray(counts), len(counts), width)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def read_profile(
    path: Path,
    shape: Shape,
    target: float | None = None,
    missing_ok: bool = False,
) -> np.ndarray | None:
    """Kept counts [n_layers] of a search profile file at `target` (or its only target);
    shape = (n_layers, width, align). A target the file lacks is an error, or None with
    `missing_ok`; None too when the shape is not known yet (`parse_allocation`)."""
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
        fractions = [
            check_length(p["fractions"], n_layers, what)
            if "fractions" in p
            else fractions_of(_entry_kept(p, n_layers, width, align, what), width)
            for p in entries
        ]
    try:
        return Profile(np.array([float(p["target"]) for p in entries]), np.stack(fractions))
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


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


def parse_allocation(spec: str, shape: Shape, target: float | None = None) -> np.ndarray | None:
    """Kept counts [n_layers] of an ALLOCATION (`dense`: full width); shape = (n_layers, width,
    align); fractions round to `align`, a profile's kept counts are read as written. ConfigError
    in one line.

    Before the model loads, n_layers and width are what `models.peek_shape` finds (None where
    it finds nothing): everything those allow is checked and None is returned; after the load
    the same call returns the kept counts."""
    n_layers, width, align = shape
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
    if profile:
        return read_profile(path, shape, target)
    fractions = None  # dense
    if spec.startswith("uniform:"):
        fraction = _number(spec.removeprefix("uniform:"))
        fractions = check_length([fraction] * (n_layers or 1), n_layers)
    elif is_file:
        values = values.get("fractions", values) if isinstance(values, dict) else values
        fractions = check_length(values, n_layers)
    elif spec != "dense":
        fractions = check_length([_number(v) for v in spec.split(",")], n_layers)
    if n_layers is None or width is None:
        return None
    if fractions is None:
        return dense_kept(n_layers, width)
    return kept_counts(fractions, width, align)


def agent_env(agent_path: Path, env: EnvConfig) -> tuple[EnvConfig, str | None]:
    """`env` with the action mapping of the train run the agent comes from (ACTION_KEYS of the
    config.yaml beside it: reward mode, targets, reference profile, radius, align, neurons), so
    an agent always runs under the mapping it was trained with, and None; if the agent has no
    run folder, `env` unchanged and a warning saying so (to print and record)."""
    for folder in list(agent_path.parents)[:3]:  # train_*/agent_final.zip or .../step_N/agent.zip
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


def read_budget_rule(path: Path, target: float, neurons: str, shape: Shape) -> BudgetRule:
    """The per-input budget rule of `target` and `neurons` from an `eval` run's
    budget_rules.json (the mixed task with `eval.fit_items`), checked against the model's
    (n_layers, width, align); every mistake is one ConfigError line."""
    if not path.is_file():
        raise ConfigError(
            f"budget rules {path} do not exist; `eval` writes budget_rules.json on the mixed "
            "task with eval.fit_items"
        )
    try:  # JSON as `eval` wrote it (YAML would read 1e-05 as a string)
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"budget rules {path} are not valid JSON (truncated?)") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"budget rules {path} hold no 'rules'; write them with `eval`")
    mine = (data.get("n_layers"), data.get("width"), data.get("align"))
    if any(want is not None and want != have for want, have in zip(shape, mine, strict=True)):
        raise ConfigError(
            f"budget rules {path} were fitted for (layers, width, align) {mine}, this model "
            f"and config are {shape}: fit them with this model's `eval`"
        )
    rules = [r for r in data["rules"] if isinstance(r, dict)]
    found = [r for r in rules if r.get("neurons") == neurons and r.get("target") == target]
    if not found:
        have = sorted({(r.get("target"), r.get("neurons")) for r in rules}, key=str)
        raise ConfigError(
            f"budget rules {path} have no rule for target {target} with {neurons} neurons; "
            f"they have {have}"
        )
    try:
        return BudgetRule.from_dict(found[0])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"budget rules {path}: a malformed rule ({exc}); rewrite with `eval`"
        ) from exc
