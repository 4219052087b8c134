"""Learn how much of each LLM layer to prune, per input, with reinforcement learning.

python3 main.py <command> [--config PATH] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import sys

from commands import COMMANDS
from commands.common import check_align
from config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP, description=command.HELP)
        p.add_argument("--config", default="config.yml", help="config or preset (%(default)s)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set env.quality_weight=0.7 (repeatable)",
        )
        p.add_argument("--debug", action="store_true", help="show the traceback on errors")
        command.add_arguments(p)
    return parser


def quiet_libraries() -> None:
    """Our own tqdm bars and milestones are the output; silence the libraries' loading chatter."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        cfg = load_config(args.config, args.set)
        check_align(cfg)  # needs only the model's config file: before any command loads it
        return COMMANDS[args.command].run(cfg, args)
    except (ConfigError, FileNotFoundError, NotImplementedError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
