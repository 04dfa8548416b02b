"""Ray's one home in the library: the session set-up and the Ray executor.

``ray_session`` is shared by the jobs (train, demo, doctor) and ``RayExecutor``
(preprocess, label). With no address it starts an embedded local Ray (no dashboard,
loopback only) and shuts it down on exit; with an address it joins that cluster (the
jobs pass ``--address``, or the ``RAY_ADDRESS`` that ``ray job submit`` exports: this
module reads no environment).
Token auth is Ray's default and is left on. Ray is imported inside the functions, so
importing this module costs nothing.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from avfusion.executor import BatchPipeline, Columns, Executor, R, T

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
    return {
        "logging_level": logging.INFO if verbose else logging.WARNING,
        "log_to_driver": verbose or worker_output,
    }


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
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: bool = False,
    worker_output: bool = False,
    data: bool = False,
) -> Iterator[None]:
    """``data``: the job uses Ray Data (its progress bars and INFO lines are quietened too)."""
    import ray

    if ray.is_initialized():
        if data:
            _quiet_ray_data(verbose)
        yield
        return
    quiet = quiet_init_kwargs(verbose, worker_output)
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(**embedded_init_kwargs(num_cpus), **quiet)
    if data:
        _quiet_ray_data(verbose)
    try:
        yield
    finally:
        ray.shutdown()


class RayExecutor(Executor):
    """One Ray task per item (``num_cpus`` each), at most ``concurrency`` in flight
    (default: the cluster's CPUs), each re-run up to ``retries`` times by Ray when its
    worker dies. ``fn`` is put in the object store once, not once per task. Tasks are
    named after ``fn`` (``ray::process_shard`` in ``ps`` and the dashboard). A batch
    pipeline runs on Ray Data, which sizes its own decode tasks.

    Entering starts or joins Ray (``ray_session``); leaving shuts down what it started.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        *,
        concurrency: int | None = None,
        task_cpus: float = 1,
        verbose: bool = False,
    ) -> None:
        self.address, self.num_cpus, self.verbose = address, num_cpus, verbose
        self.concurrency, self.task_cpus = concurrency, task_cpus
        self._session: AbstractContextManager[None] | None = None
        self._shared: dict[str, ActorProxy] = {}

    def __enter__(self) -> RayExecutor:
        session = ray_session(self.address, self.num_cpus, verbose=self.verbose)
        self._session = session
        session.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._shared.clear()  # the run's actors end with their last reference
        session, self._session = self._session, None
        if session is not None:
            session.__exit__(*exc_info)

    def slots(self) -> int:
        """``concurrency``, else as many tasks as the cluster's CPUs hold."""
        import ray

        if self.concurrency:
            return self.concurrency
        return max(1, int(ray.cluster_resources().get("CPU", 1) // self.task_cpus))

    def map_unordered(
        self, fn: Callable[[T], R], items: Iterable[T], *, retries: int = 0
    ) -> Iterator[tuple[T, R | BaseException]]:
        import ray

        remote: Any = ray.remote(_apply).options(
            num_cpus=self.task_cpus, max_retries=retries, name=_name_of(fn)
        )
        fn_ref = ray.put(fn)
        limit = self.slots()
        queue = list(items)
        running: dict[Any, T] = {}  # Ray ObjectRef → its item
        try:
            while queue or running:
                while queue and len(running) < limit:
                    item = queue.pop(0)
                    running[remote.remote(fn_ref, item)] = item
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    item = running.pop(ref)
                    try:
                        yield item, ray.get(ref)
                    except (ray.exceptions.RayError, OSError) as exc:  # the task raised, or its worker died
                        yield item, exc
        finally:
            _drain(running)

    def map_batches(self, pipeline: BatchPipeline, items: list[dict[str, Any]]) -> Iterator[Columns]:
        """The pipeline on Ray Data (``ray_data.pipeline_dataset``): decode tasks, then
        ``pipeline.instances`` model actors of ``pipeline.gpus`` GPUs each."""
        from avfusion.executor.ray_data import pipeline_dataset

        _quiet_ray_data(self.verbose)
        yield from pipeline_dataset(pipeline, items).iter_batches(batch_size=None, batch_format="numpy")

    def shared(self, name: str, cls: type, *args: Any, **kwargs: Any) -> ActorProxy:
        """A named actor for this run (the same proxy for the same name until the
        executor is left). Each run gets a fresh actor under a unique name: reusing a
        name across runs in one session (a retry round after the first run) could hand
        back the previous run's actor while Ray is still ending it."""
        import ray

        if name not in self._shared:
            unique = f"{name}-{uuid.uuid4().hex[:8]}"
            handle: Any = ray.remote(cls).options(name=unique, num_cpus=0).remote(*args, **kwargs)
            self._shared[name] = ActorProxy(handle)
        return self._shared[name]


class ActorProxy:
    """Synchronous method calls on an actor: ``proxy.acquire(n)`` is
    ``ray.get(handle.acquire.remote(n))``. Picklable, so tasks can receive it."""

    def __init__(self, handle: Any) -> None:  # a Ray ActorHandle
        self._handle = handle

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        remote_method = getattr(self._handle, method)

        def call(*args: Any, **kwargs: Any) -> Any:
            import ray

            return ray.get(remote_method.remote(*args, **kwargs))

        return call

    def __reduce__(self) -> tuple[type[ActorProxy], tuple[Any]]:
        return ActorProxy, (self._handle,)


def _drain(running: dict[Any, Any]) -> None:
    """The caller stopped early (a block stopped the job): let the tasks in flight end
    before it reports, so no shard's stats land after the manifest, and read their
    results, so Ray prints no "Unhandled error" for them."""
    import ray

    for ref in running:
        try:
            ray.get(ref)
        except (ray.exceptions.RayError, OSError):
            pass


def _apply(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


def _name_of(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__name__", None) or type(inner).__name__
