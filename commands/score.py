"""score command."""

from __future__ import annotations

import argparse

from config import Config

HELP = "score"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(cfg: Config, args: argparse.Namespace) -> int:
    del cfg, args
    raise NotImplementedError("not yet implemented")
