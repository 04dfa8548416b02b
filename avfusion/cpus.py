"""How many CPUs this process may keep busy: the one count that sizes parallel work
(loader workers, torch threads, decode threads, Ray Train's CPU reservations).

Why not ``os.sched_getaffinity`` or ``os.cpu_count`` alone: a container's CPU limit
(Kubernetes ``limits.cpu``, ``docker --cpus``) is a CFS bandwidth quota, which leaves
the affinity mask at every core of the host, so an 8-CPU pod on a 64-core host would
fork 63 loader workers. The quota is read from the cgroup files the kernel exposes:
v2 ``cpu.max`` ("max 100000" or "200000 100000") and v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us`` (-1: none), in every cgroup from the hierarchy's top down to
this process's own (``/proc/self/cgroup``), the tightest winning: cgroups nest, and a
parent's quota bounds its children. Anything unreadable or malformed counts as no
quota, never as an error.

A fractional quota is rounded down (1.5 CPUs → 1; never below 1): that many busy
processes never exceed what the quota pays for, so the kernel never throttles them
all for the rest of a period (100 ms), and the count equals the CPUs Ray advertises
for the same container (Ray truncates the quota too), so a reservation sized from it
fits the node. Stdlib only: jobs import it without loading torch.
"""

from __future__ import annotations

import math
import os
import stat

__all__ = ["cpu_quota", "usable_cpus"]


def usable_cpus(root: str = "/") -> int:
    """min(CPUs in this process's affinity mask, its cgroup CPU quota rounded down),
    at least 1. ``root``: where ``sys/`` and ``proc/`` are found (tests lay out a copy)."""
    quota = cpu_quota(root)
    cores = _affinity()
    return max(1, cores if quota is None else min(cores, math.floor(quota)))


def cpu_quota(root: str = "/") -> float | None:
    """The tightest cgroup CPU quota over this process's cgroups, in CPUs (v2 and v1,
    each cgroup along the path), or None when none is set or none can be read."""
    cgroups = _read(os.path.join(root, "proc", "self", "cgroup"))
    if cgroups is None:
        return None
    base = os.path.join(root, "sys", "fs", "cgroup")
    quotas: list[float] = []
    for line in cgroups.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and not controllers:  # v2: pure at the base, or "unified" in a hybrid
            for mount in (base, os.path.join(base, "unified")):
                if os.path.exists(os.path.join(mount, "cgroup.controllers")):
                    quotas += [q for d in _along(mount, path) if (q := _v2_quota(d)) is not None]
                    break
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            for mount in _v1_cpu_mounts(base, controllers):
                quotas += [q for d in _along(mount, path) if (q := _v1_quota(d)) is not None]
    return min(quotas, default=None)


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux; macOS has no affinity mask
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _along(mount: str, path: str) -> list[str]:
    """The cgroup folders from the mount's top down to ``path``, those that exist.
    The top is included: a container without its own cgroup namespace sees the host's
    path in /proc/self/cgroup while its mount's top is its own cgroup."""
    folders, here = [mount], mount
    for part in path.split("/"):
        if part in ("", ".", ".."):
            continue
        here = os.path.join(here, part)
        folders.append(here)
    return [f for f in folders if os.path.isdir(f)]


def _v1_cpu_mounts(base: str, controllers: str) -> list[str]:
    """Where the v1 cpu controller is mounted: named after its co-mounted controllers
    ("cpu,cpuacct") or alone ("cpu"); the first that exists."""
    for name in (controllers, "cpu,cpuacct", "cpuacct,cpu", "cpu"):
        mount = os.path.join(base, name)
        if os.path.isdir(mount):
            return [mount]
    return []


def _v2_quota(folder: str) -> float | None:
    text = _read(os.path.join(folder, "cpu.max"))
    fields = text.split() if text else []
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(folder: str) -> float | None:
    quota = _read(os.path.join(folder, "cpu.cfs_quota_us"))
    period = _read(os.path.join(folder, "cpu.cfs_period_us"))
    if quota is None or period is None:
        return None
    return _ratio(quota.strip(), period.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if not (q > 0 and p > 0):
        return None  # v1 writes -1 for "no quota"
    try:
        return q / p
    except OverflowError:  # a quota no float holds is no limit
        return None


def _read(path: str) -> str | None:
    # Kernel interface files, a few bytes each: not user data, so not through storage.
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO in its place would block the open
            return None
        with open(path, encoding="ascii") as f:
            return f.read(4096)
    except (OSError, ValueError):  # absent, unreadable, not text
        return None
