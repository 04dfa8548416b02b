"""Where work runs: the one interface between the library's orchestration and a cluster.

In the spirit of img2dataset's distributor: the orchestration (``avfusion.preprocess.run``,
``avfusion.labelling.run``) hands an ``Executor`` its work and reads the results back. It
never imports Ray. Two kinds of work:

* ``map_unordered(fn, items)``: ``fn`` per item; yields, in completion order, either the
  result or the exception that ended the item (preprocess: one item per shard);
* ``map_batches(pipeline, items)``: a :class:`BatchPipeline`, a stateless ``decode``
  over batches of items, then a pool of stateful ``model`` instances over batches of
  the decoded rows; yields the model's batches (labelling).

Two implementations:

* ``InProcessExecutor`` (here): the work runs in this process, serially or on a few
  threads, one model instance. For tests, small runs and machines without Ray.
* ``RayExecutor`` (``avfusion.executor.ray_tasks``): one Ray task per item, at most
  ``concurrency`` in flight, re-run by Ray when their worker dies; a pipeline runs on
  Ray Data (decode tasks, then an actor pool; ``avfusion.executor.ray_data``).

``shared(name, cls, *args)`` gives every item one common object (the download
governor: one rate limit across all tasks) behind a proxy whose method calls are
synchronous: in-process the object itself, on Ray a named actor called via
``ray.get``. An executor is a context manager: entering it starts what it needs (Ray),
leaving stops what it started; the orchestration enters it only when there is work.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

from avfusion.cpus import usable_cpus

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")
R = TypeVar("R")
Columns = dict[str, "np.ndarray"]  # a batch of rows: equal-length numpy columns


@dataclass(frozen=True)
class BatchPipeline:
    """Two stages over batches of rows. ``decode``: a stateless function, applied to
    ``decode_batch`` items at a time wherever the executor likes. ``model``: a class
    whose instances keep state (a loaded checkpoint), each built once as
    ``model(**model_kwargs, gpus_assigned=n)`` (n: the GPUs granted to it, from
    ``gpus``) and called on ``model_batch`` decoded rows at a time. ``model`` None:
    the decoded batches themselves."""

    decode: Callable[[Columns], Columns]
    decode_batch: int
    model: type | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    model_batch: int = 16
    instances: int = 1  # model instances (Ray's actor pool; in-process there is one)
    gpus: float = 0.0  # per instance; 0: the CPU, even where CUDA is visible
    memory_mb: int = 1024  # reserved per instance


class Executor:
    """The interface. Subclasses implement ``map_unordered``, ``map_batches`` and ``shared``."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def slots(self) -> int:
        """How many ``map_unordered`` items run at once (call it inside ``with executor:``)."""
        return 1

    def map_unordered(
        self, fn: Callable[[T], R], items: Iterable[T], *, retries: int = 0
    ) -> Iterator[tuple[T, R | BaseException]]:
        """Run ``fn(item)`` for every item; yield ``(item, result)`` as each finishes, or
        ``(item, exception)`` when it failed. ``retries``: re-runs of an item whose
        worker died (a lost node, an OOM kill) before its failure is yielded; an
        exception ``fn`` raises itself is yielded at once (it would raise again)."""
        raise NotImplementedError

    def map_batches(self, pipeline: BatchPipeline, items: list[dict[str, Any]]) -> Iterator[Columns]:
        """Run ``pipeline`` over ``items`` (dicts with the same keys); yield the last
        stage's batches as they complete (no order promised). An exception in a stage
        ends the iteration. Call it inside ``with executor:``."""
        raise NotImplementedError

    def shared(self, name: str, cls: type, *args: Any, **kwargs: Any) -> Any:
        """One ``cls(*args, **kwargs)`` for the whole run, the same object for the same
        name; the proxy it returns can be passed inside ``fn``'s items or closure. Call
        it inside ``with executor:`` (on Ray the actor lives in the session entered)."""
        raise NotImplementedError


class InProcessExecutor(Executor):
    """Items run here: serially (``concurrency=1``, the default) or on that many threads.

    No worker can die under an item here, so ``retries`` has nothing to re-run. A
    pipeline decodes ``concurrency`` batches at once on threads, at most one per CPU:
    a decode's deadline is wall time, which threads beyond the cores only stretch. One
    model instance predicts in the calling thread, in item order."""

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = max(1, concurrency)
        self._shared: dict[str, Any] = {}
        self._lock = threading.Lock()

    def slots(self) -> int:
        return self.concurrency

    def map_unordered(
        self, fn: Callable[[T], R], items: Iterable[T], *, retries: int = 0
    ) -> Iterator[tuple[T, R | BaseException]]:
        queue = list(items)
        if self.concurrency == 1:
            for item in queue:
                yield item, _call(fn, item)
            return
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            running: dict[Future[R | BaseException], T] = {}
            while queue or running:
                while queue and len(running) < self.concurrency:
                    item = queue.pop(0)
                    running[pool.submit(_call, fn, item)] = item
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), future.result()

    def map_batches(self, pipeline: BatchPipeline, items: list[dict[str, Any]]) -> Iterator[Columns]:
        model = None
        if pipeline.model is not None:
            model = pipeline.model(**pipeline.model_kwargs, gpus_assigned=math.ceil(pipeline.gpus))
        step = pipeline.decode_batch
        chunks = (_columns(items[i : i + step]) for i in range(0, len(items), step))
        decoded = self._ordered(pipeline.decode, chunks)
        if model is None:
            yield from decoded
            return
        for batch in _rebatch(decoded, pipeline.model_batch):
            yield model(batch)

    def _ordered(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``fn`` over ``items`` on the decode threads, in order, no more than the threads
        ahead of the consumer (decoded batches are large)."""
        threads = min(self.concurrency, usable_cpus())
        if threads == 1:
            yield from map(fn, items)
            return
        with ThreadPoolExecutor(max_workers=threads) as pool:
            queue = iter(items)
            ahead = deque(pool.submit(fn, item) for item in islice(queue, threads))
            while ahead:
                future = ahead.popleft()
                ahead.extend(pool.submit(fn, item) for item in islice(queue, 1))
                yield future.result()

    def shared(self, name: str, cls: type, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if name not in self._shared:
                self._shared[name] = cls(*args, **kwargs)
            return self._shared[name]


def _call(fn: Callable[[T], R], item: T) -> R | BaseException:
    try:
        return fn(item)
    except Exception as exc:  # noqa: BLE001 - the item's failure is data for the caller, not the run's end
        return exc


def _columns(items: list[dict[str, Any]]) -> Columns:
    """Items (dicts) → one batch of numpy columns, as Ray Data hands a function its batch."""
    import numpy as np

    return {key: np.array([item[key] for item in items]) for key in items[0]}


def _rebatch(batches: Iterable[Columns], size: int) -> Iterator[Columns]:
    """The rows of ``batches``, in order, as batches of ``size`` rows (the last may be smaller)."""
    import numpy as np

    pending: list[Columns] = []
    rows = 0
    for batch in batches:
        n = len(next(iter(batch.values())))
        if not n:
            continue
        pending.append(batch)
        rows += n
        while rows >= size:
            joined = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
            yield {k: v[:size] for k, v in joined.items()}
            pending, rows = [{k: v[size:] for k, v in joined.items()}], rows - size
    if rows:
        yield {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
