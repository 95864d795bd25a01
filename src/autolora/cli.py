"""The `autolora` command: train, evaluate, aggregate and audit robust fine-tuning runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

from autolora import __version__, commands
from autolora.errors import AutoloraError

EXIT_USER_ERROR = 2


def verb_modules() -> list[ModuleType]:
    names = sorted(info.name for info in pkgutil.iter_modules(commands.__path__))
    return [importlib.import_module(f"autolora.commands.{name}") for name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autolora", description=__doc__)
    parser.add_argument("--version", action="version", version=f"autolora {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in verb_modules():
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_verb_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        return int(args._verb_run(args) or 0)
    except AutoloraError as error:
        print(f"autolora {args.verb}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
