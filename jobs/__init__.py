"""Thin entry points, one module per job, each with ``main(argv) -> int``.

Jobs wire library stages together and own the distributed set-up (Ray); the
``avfusion`` library underneath stays importable without a cluster. Jobs read the
environment and pass what they read in: the library reads none.
"""

from __future__ import annotations

import os


def ray_address(given: str | None) -> str | None:
    """The Ray cluster a job joins: ``--address``, else the one ``ray job submit``
    exports (``RAY_ADDRESS``); None starts an embedded local Ray."""
    return given or os.environ.get("RAY_ADDRESS") or None


def executor_of(args):
    """The executor ``--executor`` names: ``local`` runs the work in this process,
    ``--concurrency`` at a time (default 1), and imports no Ray; ``ray`` starts an
    embedded Ray or joins ``--address``."""
    if args.executor == "local":
        from avfusion.executor import InProcessExecutor

        return InProcessExecutor(args.concurrency or 1)
    from avfusion.executor.ray_tasks import RayExecutor

    return RayExecutor(
        ray_address(args.address), args.num_cpus, concurrency=args.concurrency, verbose=args.verbose
    )
