"""Thin entry points, one module per job, each with ``main(argv) -> int``.

Jobs wire library stages together and own the distributed set-up (Ray); the
``avfusion`` library underneath stays importable without a cluster. Jobs read the
environment and pass what they read in: the library reads none.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn, TypeVar, cast

Main = TypeVar("Main", bound=Callable[..., int])


class JobParser(argparse.ArgumentParser):
    """A job's flags; a bad one is one line (``prog: argument --x: …``) and exit 2,
    like every other refused input, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def refuse(prog: str, exc: BaseException, verbose: bool = False, redactor=None) -> int:
    """Exit status 2 after one line on stderr saying what was wrong; ``verbose``: the
    traceback first (for a bug report). The line passes the redaction filter (the job's
    ``redactor`` when it has one): a refused value may be a URL with a password in it."""
    from avfusion.redact import redact_patterns

    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the library said
    message = (redactor or redact_patterns)(message)
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return 2


def refusing(prog: str, *errors: type[BaseException]) -> Callable[[Main], Main]:
    """Decorate a job's ``main``: a bad config or flag value (``ConfigError``), a
    malformed clip list (``SourceError``), a device that cannot be used
    (``DeviceError``), a path that cannot be read or written (``OSError``) and the
    job's own ``errors`` become :func:`refuse`'s one line and exit 2 wherever they
    surface; ``--verbose`` on the command line adds the traceback."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            from avfusion.config import ConfigError
            from avfusion.device import DeviceError
            from avfusion.sources import SourceError

            refused: tuple[type[BaseException], ...] = (
                ConfigError,
                SourceError,
                DeviceError,
                OSError,
                *errors,
            )
            try:
                return main(argv)
            except refused as exc:
                given = sys.argv[1:] if argv is None else argv
                return refuse(prog, exc, verbose="--verbose" in given)

        return cast(Main, run)

    return wrap


def ray_address(given: str | None) -> str | None:
    """The Ray cluster a job joins: ``--address``, else the one ``ray job submit``
    exports (``RAY_ADDRESS``); None starts an embedded local Ray."""
    return given or os.environ.get("RAY_ADDRESS") or None


def executor_of(args):
    """The executor ``--executor`` names: ``local`` runs the work in this process,
    ``--concurrency`` at a time (default 1), and imports no Ray; ``ray`` starts an
    embedded Ray or joins ``--address``."""
    from avfusion.config import ExecutorSpec

    ExecutorSpec(concurrency=args.concurrency, num_cpus=args.num_cpus)  # bounds: one line, exit 2
    if args.executor == "local":
        from avfusion.executor import InProcessExecutor

        return InProcessExecutor(args.concurrency or 1)
    from avfusion.executor.ray_tasks import RayExecutor

    return RayExecutor(
        ray_address(args.address), args.num_cpus, concurrency=args.concurrency, verbose=args.verbose
    )
