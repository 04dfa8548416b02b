"""Ray set-up shared by the jobs: embedded local instance or an existing cluster.

With no address, jobs start an embedded local Ray (no dashboard, loopback only) and
shut it down on exit; with ``--address`` (or inside ``ray job submit``, where Ray is already
initialised) they join the cluster. Token auth is Ray's default and is left on.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


# Ray rewrites 127.0.0.1 to the machine's routable address (so other nodes could
# join); an embedded single-machine instance has no such need, so on Linux it
# advertises another loopback address, which Ray keeps. macOS/Windows Ray already
# stays on 127.0.0.1.
EMBEDDED_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else None


def embedded_init_kwargs(num_cpus: int | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_cpus": num_cpus, "include_dashboard": False}
    if EMBEDDED_NODE_IP:
        kwargs["_node_ip_address"] = EMBEDDED_NODE_IP
    return kwargs


def quiet_init_kwargs(verbose: bool, worker_output: bool = False) -> dict[str, Any]:
    """What the user sees: our progress bars and summaries. Ray's INFO lines go to its
    log files (``/tmp/ray/session_*/logs``) and only WARNING and above reach the
    terminal, unless ``--verbose``. Worker stdout is forwarded only where our own code
    prints there (Ray Train's rank 0 prints the epoch metrics)."""
    return {"logging_level": logging.INFO if verbose else logging.WARNING,
            "log_to_driver": verbose or worker_output}


def _quiet_ray_data(verbose: bool) -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose  # our tqdm bar counts files; Ray's per-operator bars are noise
    ctx.enable_operator_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    for name in ("ray.data", "ray.train", "ray.tune", "ray"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    # Its one warning says the bars are off, which is our choice, not the user's problem.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.INFO if verbose else logging.ERROR)


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, verbose: bool = False,
                worker_output: bool = False, data: bool = False) -> Iterator[None]:
    """``data``: the job uses Ray Data (its progress bars and INFO lines are quietened too)."""
    import ray

    if ray.is_initialized():
        if data:
            _quiet_ray_data(verbose)
        yield
        return
    quiet = quiet_init_kwargs(verbose, worker_output)
    if address or os.environ.get("RAY_ADDRESS"):
        # Inside `ray job submit` Ray exports RAY_ADDRESS: join that cluster as it is.
        ray.init(address=address, **quiet)
    else:
        ray.init(**embedded_init_kwargs(num_cpus), **quiet)
    if data:
        _quiet_ray_data(verbose)
    try:
        yield
    finally:
        ray.shutdown()


def as_completed(refs: list[Any], desc: str, unit: str = "clip") -> Iterator[Any]:
    """Yield task results as they finish, with a tqdm bar over all of them."""
    import ray
    from tqdm import tqdm

    pending = list(refs)
    with tqdm(total=len(pending), desc=desc, unit=unit) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
                bar.update(1)
