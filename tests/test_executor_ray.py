"""RayExecutor on a real embedded Ray: the concurrency limit, worker-death retries,
task errors returned as data, and one shared actor behind a synchronous proxy."""

import os
import time

import pytest

from avfusion.executor.ray_tasks import RayExecutor

pytestmark = pytest.mark.slow


def spans(item):
    t0 = time.time()
    time.sleep(0.3)
    return os.getpid(), t0, time.time()


def raise_on_two(item):
    if item == 2:
        raise ValueError("two is bad")
    return item


def die_once(marker):
    """Kill this worker process the first time (the marker file says whether it was)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return "second attempt"


class Counter:
    def __init__(self, start):
        self.n = start

    def add(self, k):
        self.n += k
        return self.n, os.getpid()


def add_through(item):
    proxy, k = item
    n, actor_pid = proxy.add(k)
    return actor_pid, os.getpid()


def test_concurrency_limit_and_errors(ray_local):
    with RayExecutor(concurrency=1) as ex:
        runs = sorted(r for _, r in ex.map_unordered(spans, range(3)))
        for (_, _, end), (_, start, _) in zip(runs, runs[1:], strict=False):
            assert start >= end - 0.01, runs  # one at a time
        results = dict(ex.map_unordered(raise_on_two, [1, 2, 3]))
    assert results[1] == 1 and results[3] == 3
    assert isinstance(results[2], ValueError) and "two is bad" in str(results[2])


def test_worker_death_is_retried_only_when_allowed(tmp_path, ray_local):
    import ray

    with RayExecutor() as ex:
        ((_, again),) = list(ex.map_unordered(die_once, [str(tmp_path / "a")], retries=1))
        ((_, lost),) = list(ex.map_unordered(die_once, [str(tmp_path / "b")], retries=0))
    assert again == "second attempt"
    assert isinstance(lost, ray.exceptions.RayError) and not isinstance(lost, ray.exceptions.RayTaskError)


def test_shared_actor_is_one_object_for_every_task(ray_local):
    with RayExecutor(concurrency=2) as ex:
        proxy = ex.shared("test-counter", Counter, 100)
        assert ex.shared("test-counter", Counter, 0).add(0)[0] == 100  # same name: the same actor
        pids = [r for _, r in ex.map_unordered(add_through, [(proxy, k) for k in (1, 2, 3, 4)])]
        assert proxy.add(0)[0] == 110
    actor_pids = {a for a, _ in pids}
    assert len(actor_pids) == 1 and not actor_pids & {t for _, t in pids} and os.getpid() not in actor_pids
