"""Ray set-up shared by the jobs: embedded local instance or an existing cluster.

With no address, jobs start an embedded local Ray (no dashboard) and shut it down on
exit; with ``--address`` (or inside ``ray job submit``, where Ray is already
initialised) they join the cluster. Token auth is Ray's default and is left on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
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
