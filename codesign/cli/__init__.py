"""The `codesign` command. Each subcommand lives in its own module of this package (``trace``,
``sample``, ``sweep``, ``simulate``, ``quant``) exposing ``register(subparsers)``; this file only wires
them together and turns bad input into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from workloads.errors import ConfigError

# subcommand modules, in the order `codesign --help` lists them
COMMAND_MODULES = [
    "codesign.cli.trace",
    "codesign.cli.sample",
    "codesign.cli.sweep",
    "codesign.cli.optimize",
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
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more messages on stderr (-v: info, -vv: debug)"
    )
    parser.add_argument(
        "-q", "--quiet", dest="log_quiet", action="store_true", help="errors only: no warnings, no progress bars"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for the user (implausible hardware, ...) as one line on stderr, no source line."""
    print(f"codesign: warning: {message}", file=sys.stderr)


# the packages whose loggers the command's -v / -q set (each module logs under its own name)
LOGGED_PACKAGES = ("codesign", "quantmodel", "hwsim", "workloads", "shapes")
_handler: logging.Handler | None = None


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a caller that redirects it sees the lines)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        where = f"{record.name}: " if record.levelno == logging.DEBUG else ""
        return f"codesign: {level}{where}{record.getMessage()}"


def configure_logging(verbose: int = 0, quiet: bool = False) -> int:
    """One stderr handler for the project's loggers: warnings by default, -v info, -vv debug, -q errors
    only. Progress bars are tqdm (on stderr) and follow -q through each command's ``progress``."""
    global _handler
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO)[verbose] if verbose < 2 else logging.DEBUG
    for name in LOGGED_PACKAGES:
        log = logging.getLogger(name)
        if _handler is not None:
            log.removeHandler(_handler)
    _handler = _Stderr()
    _handler.setFormatter(_Format())
    for name in LOGGED_PACKAGES:
        log = logging.getLogger(name)
        log.addHandler(_handler)
        log.setLevel(level)
    return level


def progress_enabled(args) -> bool:
    """Whether a command shows its progress bar (-q, or the command's own --quiet, turns it off)."""
    return not (getattr(args, "log_quiet", False) or getattr(args, "quiet", False))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.log_quiet)
    warnings.showwarning = _one_line_warning if not args.log_quiet else (lambda *a, **k: None)
    if str(getattr(args, "device", "cpu")).startswith("cuda"):  # the GPU waits for the host's part of a step:
        # its large tensors reuse pages (quantmodel.emulator.hostmem). Not on a CPU run, whose steps dwarf it:
        # there it measured no faster and held more memory (codesign quality on stdit-shapes: 3.1 -> 3.5 GB)
        from quantmodel.emulator.hostmem import keep_freed_host_memory

        keep_freed_host_memory()
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"codesign {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"codesign {args.command}: interrupted", file=sys.stderr)
        return 130
