"""The commands of main.py; each module has HELP, add_arguments(parser) and run(cfg, args)."""

from __future__ import annotations

from types import ModuleType

from commands import evaluate, export, generate, importance, score, search, train

COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "eval": evaluate,
    "importance": importance,
    "score": score,
    "search": search,
    "export": export,
    "generate": generate,
}
