"""Where work runs: the one interface between the library's orchestration and a cluster.

In the spirit of img2dataset's distributor: the orchestration (``avfusion.preprocess.run``)
hands an ``Executor`` a function and a list of items and reads back, item by item and
in completion order, either the function's result or the exception that ended the
item. It never imports Ray. Two implementations:

* ``InProcessExecutor`` (here): the items run in this process, serially or on a few
  threads. For tests, small runs and machines without Ray.
* ``RayExecutor`` (``avfusion.executor.ray_tasks``): one Ray task per item, at most
  ``concurrency`` in flight, re-run by Ray when their worker dies.

``shared(name, cls, *args)`` gives every item one common object (the download
governor: one rate limit across all tasks) behind a proxy whose method calls are
synchronous: in-process the object itself, on Ray a named actor called via
``ray.get``. An executor is a context manager: entering it starts what it needs (Ray),
leaving stops what it started; the orchestration enters it only when there is work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor:
    """The interface. Subclasses implement ``map_unordered`` and ``shared``."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def map_unordered(self, fn: Callable[[T], R], items: Iterable[T], *,
                      retries: int = 0) -> Iterator[tuple[T, R | BaseException]]:
        """Run ``fn(item)`` for every item; yield ``(item, result)`` as each finishes, or
        ``(item, exception)`` when it failed. ``retries``: re-runs of an item whose
        worker died (a lost node, an OOM kill) before its failure is yielded; an
        exception ``fn`` raises itself is yielded at once (it would raise again)."""
        raise NotImplementedError

    def shared(self, name: str, cls: type, *args: Any, **kwargs: Any) -> Any:
        """One ``cls(*args, **kwargs)`` for the whole run, the same object for the same
        name; the proxy it returns can be passed inside ``fn``'s items or closure. Call
        it inside ``with executor:`` (on Ray the actor lives in the session entered)."""
        raise NotImplementedError


class InProcessExecutor(Executor):
    """Items run here: serially (``concurrency=1``, the default) or on that many threads.

    No worker can die under an item here, so ``retries`` has nothing to re-run."""

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = max(1, concurrency)
        self._shared: dict[str, Any] = {}
        self._lock = threading.Lock()

    def map_unordered(self, fn, items, *, retries=0):
        queue = list(items)
        if self.concurrency == 1:
            for item in queue:
                yield item, _call(fn, item)
            return
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            running: dict[Future, Any] = {}
            while queue or running:
                while queue and len(running) < self.concurrency:
                    item = queue.pop(0)
                    running[pool.submit(_call, fn, item)] = item
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), future.result()

    def shared(self, name, cls, *args, **kwargs):
        with self._lock:
            if name not in self._shared:
                self._shared[name] = cls(*args, **kwargs)
            return self._shared[name]


def _call(fn: Callable[[T], R], item: T) -> R | BaseException:
    try:
        return fn(item)
    except Exception as exc:  # the item's failure is data for the caller, not the end of the run
        return exc
