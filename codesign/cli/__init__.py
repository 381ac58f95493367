"""The `codesign` command. Each subcommand lives in its own module of this package (``trace``,
``sample``, ``sweep``, ``simulate``, ``quant``) exposing ``register(subparsers)``; this file only wires
them together and turns bad input into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from workloads.errors import ConfigError

# subcommand modules, in the order `codesign --help` lists them
COMMAND_MODULES = [
    "codesign.cli.trace",
    "codesign.cli.sample",
    "codesign.cli.sweep",
    "codesign.cli.simulate",
    "codesign.cli.quant",
    "codesign.cli.validate",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own contract)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="codesign",
        description=(
            "Co-design of statically quantized video diffusion transformers (OpenSora STDiT) and edge AI processors."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for the user (implausible hardware, ...) as one line on stderr, no source line."""
    print(f"codesign: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"codesign {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"codesign {args.command}: interrupted", file=sys.stderr)
        return 130
