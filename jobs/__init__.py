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
