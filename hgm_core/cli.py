"""The `hgm` command.

Subcommands are discovered through the `hgm.commands` entry-point group (see pyproject.toml), so
this module knows none of them: `hgm_core` never imports `hgm_node`, yet `hgm demo` (a ROS graph)
is one of the commands. An entry point names a module exposing `HELP: str`,
`add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import sys
from collections.abc import Sequence


class CliError(RuntimeError):
    """An error to print as one line (no traceback) with a non-zero exit code."""


class _Unavailable:
    def __init__(self, name: str, error: Exception) -> None:
        self.name, self.error = name, error

    def run(self, args: argparse.Namespace) -> int:
        raise CliError(f"this command cannot load here ({self.error}); is the environment complete? run `make`")


def _commands() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="hgm.commands")}


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="hgm", description="Single-view human Gaussian avatars (HGM) — CPU-first, ROS 2 ready.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show what third-party libraries print (TFLite, absl, warp, protobuf, anny); "
                        "HGM_VERBOSE=1 does the same, e.g. for the worker hgm_node starts")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    eps = _commands()
    # Import only the module of the requested command: `hgm serve` must not pay for ROS, and vice versa.
    wanted = next((a for a in argv if not a.startswith("-")), None)  # global flags come first and take no value
    modules = {}
    for name in sorted(eps):
        if wanted in eps and name != wanted:
            sub.add_parser(name)
            continue
        try:
            mod = eps[name].load()
        except ImportError as e:  # a missing optional stack disables one command, not the tool
            sub.add_parser(name, help=f"(unavailable: {e})")
            modules[name] = _Unavailable(name, e)
            continue
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        modules[name] = mod
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    from hgm_core.runtime import configure_process

    argv = list(sys.argv[1:] if argv is None else argv)
    # Before any command imports anny, warp, numba or mediapipe; `-v` is read ahead of the parser,
    # which loads the command modules. Only the global position counts: `hgm reconstruct -v` is an error.
    global_flags = itertools.takewhile(lambda a: a.startswith("-"), argv)
    configure_process(verbose=any(a in ("-v", "--verbose") for a in global_flags))
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except CliError as e:
        print(f"hgm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

