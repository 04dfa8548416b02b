"""One download budget and one block state for a whole preprocess job.

YouTube limits a *source* (an IP address, a session, an account), not a clip: about
300 videos an hour as a guest and about 2,000 with an account, 5-10 s apart (yt-dlp's
wiki, "Extractors"). When it blocks ("Sign in to confirm you're not a bot", "This
content isn't available, try again later", HTTP 429, media-host 403s) every further
request from that source only prolongs the block. So every download attempt asks the
governor first (``acquire``) and tells it how it went (``report``):

- **Budget.** Per node: at most ``per_node_per_hour`` grants in any sliding hour and at
  least ``min_spacing * (1 + jitter * U)`` seconds between two grants. Globally (the
  account, when cookies are shared): ``global_per_hour`` and ``global_spacing``.
- **Blocks.** A block signal pauses the node for a cooldown that doubles from
  ``cooldown_start`` up to ``cooldown_max``; after it, exactly one probe is let
  through. A probe that succeeds (or gets an answer that is not a block: a removed
  video is YouTube talking to us) lifts the block; a probe that is blocked again
  starts the next, longer cooldown. When every known node is blocked, nodes not yet
  seen wait too (the block is then the account's, not an address's). A 403 counts as
  a block only after ``forbidden_streak`` clips in a row (one 403 may be one video's).
- **Blocks in disguise.** YouTube answers a blocked source with messages that also
  describe one broken video ("This content isn't available.", "Requested format is not
  available"): one such answer is the clip's, ``suspect_streak`` of them (either kind) in a
  row from distinct clips is the source's, and blocks it like any other block. A clip whose
  answers made a block (its retries) cannot fail the probe that follows: only another
  clip's answer can.
- **Rejected cookies.** When YouTube says the account's cookies are no longer valid,
  waiting does not help (they must be exported again): the job stops at once.
- **Stop.** When one block has lasted ``max_blocked`` seconds the governor answers
  every caller ``stop``: the job ends cleanly and a re-run resumes it.

The class is plain and thread-safe, with picklable arguments and results and no
callbacks, so one instance can be hosted for the whole job behind a proxy (a named
Ray actor on a cluster; see ``avfusion.executor``) or shared by threads in-process.
Time is read inside (``clock``) or passed in (``now``) by tests.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from avfusion.config import bounded, check_bounds

# Failure kinds (from ``avfusion.download.classify``) that say the source is blocked.
BLOCK_KINDS = (
    "blocked_bot_check",
    "blocked_session",
    "blocked_rate_limit",
    "blocked_forbidden",
    "blocked_ip",
)
# Kinds a blocked source is told as often as a broken clip (yt-dlp issues 13583, 14095:
# every video "isn't available" after about a thousand downloads; no formats without a
# JS runtime, a PO token or with SABR-only answers): a streak across clips is a block.
SUSPECT_KINDS = ("content_unavailable", "no_format")
COOKIES_INVALID = "cookies_invalid"  # the account's cookies were rotated: stop the job

GUEST_PER_HOUR = 300  # yt-dlp wiki: guest sessions
ACCOUNT_PER_HOUR = 2000  # yt-dlp wiki: with an account's cookies


class SourceBlocked(Exception):
    """The block outlasted ``max_blocked``: the job must stop (and be re-run later)."""

    def __init__(self, kind: str, blocked_seconds: float):
        super().__init__(f"source blocked ({kind}) for {blocked_seconds:.0f} s")
        self.kind, self.blocked_seconds = kind, blocked_seconds

    def __reduce__(self) -> tuple[type[SourceBlocked], tuple[str, float]]:  # picklable across processes (Ray)
        return SourceBlocked, (self.kind, self.blocked_seconds)


@dataclass(frozen=True)
class GovernorConfig:
    per_node_per_hour: float = bounded(GUEST_PER_HOUR, gt=0, le=1e7)
    global_per_hour: float | None = bounded(None, gt=0, le=1e8)  # None: no cap across nodes
    min_spacing: float = bounded(5.0, ge=0, le=86400)  # seconds between grants on a node, before jitter
    jitter: float = bounded(1.0, ge=0, le=100)  # spacing * (1 + jitter * U[0, 1)): 5-10 s by default
    global_spacing: float = bounded(0.0, ge=0, le=86400)
    cooldown_start: float = bounded(300.0, ge=0, le=7 * 86400)
    cooldown_max: float = bounded(3600.0, ge=0, le=7 * 86400)
    max_blocked: float = bounded(3600.0, gt=0, le=30 * 86400)
    forbidden_streak: int = bounded(3, ge=1, le=1000)
    suspect_streak: int = bounded(5, ge=1, le=1000)  # distinct clips in a row, each a suspect kind
    window: float = bounded(3600.0, gt=0, le=7 * 86400)  # the budget's sliding window (tests shrink it)

    def __post_init__(self) -> None:
        check_bounds(self, "governor")

    @classmethod
    def for_cookies(cls, cookies: bool, **overrides: Any) -> GovernorConfig:
        """Defaults from the wiki's figures: with cookies the account is the limit."""
        if cookies:
            overrides.setdefault("global_per_hour", ACCOUNT_PER_HOUR)
        return cls(**overrides)


@dataclass
class _Node:
    grants: deque[float] = field(default_factory=deque)
    next_at: float = 0.0
    blocked_kind: str | None = None
    blocked_since: float | None = None
    blocked_until: float = 0.0
    level: int = 0
    probing: bool = False
    streaks: dict[str, set[str]] = field(default_factory=dict)  # "forbidden"/"suspect" → clips in a row
    culprits: set[str] = field(default_factory=set)  # the clips whose answers made the current block


class _Stats(TypedDict):
    grants: int
    probes: int
    cooldowns: int
    blocked_seconds: float  # finished blocks only
    blocks: dict[str, int]  # block signals by kind


class Governor:
    def __init__(
        self,
        cfg: GovernorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ):
        self.cfg = cfg or GovernorConfig()
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        self._grants: deque[float] = deque()
        self._next_global = 0.0
        self._stopped: tuple[str, float] | None = None
        self._start = clock()
        self._anonymous = itertools.count()  # reports that name no clip are each a clip of their own
        self._stats: _Stats = {"grants": 0, "probes": 0, "cooldowns": 0, "blocked_seconds": 0.0, "blocks": {}}

    def acquire(self, node: str, now: float | None = None) -> tuple[str, float]:
        """``("go", 0)``: download now; ``("wait", s)``: ask again in ``s`` seconds;
        ``("stop", blocked_seconds)`` with the kind in ``stop_kind()``: stop the job."""
        with self._lock:
            now = self._clock() if now is None else now
            stopped = self._stopped
            if stopped:
                return "stop", stopped[1]
            n = self._nodes.setdefault(node, _Node())
            wait = self._block_wait(node, n, now)
            if wait is None:
                assert self._stopped is not None  # _block_wait has just stopped the governor
                return "stop", self._stopped[1]
            if wait == 0.0 and n.blocked_kind:  # the cooldown is over: one probe
                n.probing = True
                self._stats["probes"] += 1
                return self._grant(n, now)
            if wait <= 0:
                wait = self._budget_wait(n, now)
            if wait > 0:
                # Never past the moment a block reaches max_blocked: a caller told to come
                # back after a 300 s cooldown must hear "stop" when max_blocked is 10 s.
                return "wait", min(wait, self._until_stop(now))
            return self._grant(n, now)

    def report(
        self, node: str, kind: str | None, now: float | None = None, *, clip: str | None = None
    ) -> None:
        """The outcome of a granted attempt: ``None`` on success, else its failure kind.
        ``clip`` names what was fetched (its source): a streak counts distinct clips, so
        one clip's retries never make one, and never make a probe fail."""
        with self._lock:
            now = self._clock() if now is None else now
            n = self._nodes.setdefault(node, _Node())
            if kind == COOKIES_INVALID:
                self._stopped = self._stopped or (kind, 0.0)
                return
            group = (
                "forbidden" if kind == "blocked_forbidden" else "suspect" if kind in SUSPECT_KINDS else None
            )
            if group is None and kind in BLOCK_KINDS:
                self._block(n, kind, now, set())
                return
            if group is not None:
                assert kind is not None
                clip = clip if clip is not None else f"#{next(self._anonymous)}"
                if n.probing and clip in n.culprits:
                    n.probing = False  # a clip that made the block says it again: the probe told nothing
                    return
                clips = n.streaks.setdefault(group, set())
                clips.add(clip)
                needed = self.cfg.forbidden_streak if group == "forbidden" else self.cfg.suspect_streak
                if len(clips) >= needed or n.probing:
                    self._block(n, kind, now, set(clips))
                    clips.clear()
                return
            n.streaks.clear()
            if n.blocked_kind and (n.probing or kind is None):  # the probe got through
                assert n.blocked_since is not None  # set with blocked_kind
                self._stats["blocked_seconds"] += now - n.blocked_since
                n.blocked_kind, n.blocked_since, n.level, n.probing = None, None, 0, False
                n.culprits = set()

    def stop_kind(self) -> str | None:
        """The block kind that stopped the job, or None; asking checks ``max_blocked``
        itself, so a caller that only polls (a download in its backoff) hears the stop."""
        with self._lock:
            self._check_stop(self._clock())
            return self._stopped[0] if self._stopped else None

    def stats(self, now: float | None = None) -> dict[str, Any]:
        """Grants, probes, cooldowns, blocked seconds (finished and ongoing blocks),
        block signals by kind, downloads per hour since the governor started."""
        with self._lock:
            now = self._clock() if now is None else now
            out: dict[str, Any] = {**self._stats, "blocks": dict(self._stats["blocks"])}
            out["blocked_seconds"] += sum(
                now - n.blocked_since for n in self._nodes.values() if n.blocked_since
            )
            out["blocked_seconds"] = round(out["blocked_seconds"], 3)
            out["downloads_per_hour"] = round(out["grants"] * 3600.0 / max(now - self._start, 1e-9), 1)
            out["blocked_nodes"] = sorted(k for k, n in self._nodes.items() if n.blocked_kind)
            out["stopped"] = self._stopped[0] if self._stopped else None  # as the callers were told
            return out

    def _block(self, n: _Node, kind: str, now: float, culprits: set[str]) -> None:
        self._stats["blocks"][kind] = self._stats["blocks"].get(kind, 0) + 1
        if n.blocked_kind and not n.probing and now < n.blocked_until:
            n.culprits |= culprits
            return  # attempts granted before the block reporting late: same cooldown
        n.culprits = culprits
        n.level += 1
        cooldown = min(self.cfg.cooldown_max, self.cfg.cooldown_start * 2 ** (n.level - 1))
        n.blocked_kind, n.blocked_until, n.probing = kind, now + cooldown, False
        n.blocked_since = n.blocked_since if n.blocked_since is not None else now
        self._stats["cooldowns"] += 1

    def _block_wait(self, name: str, n: _Node, now: float) -> float | None:
        """Seconds this node must wait for a block to lift; 0 when it may go (or probe);
        None when a block has lasted too long (the governor is then stopped)."""
        if self._check_stop(now):
            return None
        if n.blocked_kind:
            if n.probing:
                return max(1.0, self.cfg.min_spacing)  # one probe at a time
            return max(0.0, n.blocked_until - now)
        others = [o for k, o in self._nodes.items() if k != name]
        if not n.grants and others and all(o.blocked_kind for o in others):
            return max(0.0, min(o.blocked_until for o in others) - now) or max(1.0, self.cfg.min_spacing)
        return 0.0

    def _check_stop(self, now: float) -> bool:
        """Stop the governor when a block has lasted ``max_blocked``; True when stopped."""
        if self._stopped:
            return True
        for n in self._nodes.values():
            if n.blocked_since is not None and now - n.blocked_since >= self.cfg.max_blocked:
                assert n.blocked_kind is not None  # set with blocked_since
                self._stopped = (n.blocked_kind, now - n.blocked_since)
                return True
        return False

    def _until_stop(self, now: float) -> float:
        """Seconds until the oldest ongoing block reaches ``max_blocked`` (inf: none)."""
        since = [n.blocked_since for n in self._nodes.values() if n.blocked_since is not None]
        return max(0.0, min(since) + self.cfg.max_blocked - now) if since else float("inf")

    def _budget_wait(self, n: _Node, now: float) -> float:
        window = self.cfg.window
        for q in (n.grants, self._grants):
            while q and q[0] <= now - window:
                q.popleft()
        waits = [n.next_at - now, self._next_global - now]
        if len(n.grants) >= self.cfg.per_node_per_hour * window / 3600.0:
            waits.append(n.grants[0] + window - now)
        if self.cfg.global_per_hour and len(self._grants) >= self.cfg.global_per_hour * window / 3600.0:
            waits.append(self._grants[0] + window - now)
        return max(0.0, *waits)

    def _grant(self, n: _Node, now: float) -> tuple[str, float]:
        n.grants.append(now)
        self._grants.append(now)
        n.next_at = now + self.cfg.min_spacing * (1 + self.cfg.jitter * self._rng.random())
        self._next_global = now + self.cfg.global_spacing
        self._stats["grants"] += 1
        return "go", 0.0


class GovernorClient(Protocol):
    """What a download asks of the governor: a :class:`Governor` or a proxy to one."""

    def acquire(self, node: str) -> tuple[str, float]: ...

    def report(self, node: str, kind: str | None, *, clip: str | None = None) -> None: ...

    def stop_kind(self) -> str | None: ...


def wait_for_turn(
    governor: GovernorClient, node: str, sleep: Callable[[float], None] = time.sleep, max_wait: float = 2.0
) -> None:
    """Block the calling thread until ``governor`` grants ``node`` a download; raise
    ``SourceBlocked`` when it says stop. ``governor`` may be a proxy to a remote one.
    Asks again at least every ``max_wait`` seconds: a wait answered before another node's
    block began (a spent hourly budget) must not outlive that block's ``max_blocked``."""
    while True:
        verdict, value = governor.acquire(node)
        if verdict == "go":
            return
        if verdict == "stop":
            raise SourceBlocked(governor.stop_kind() or "blocked", value)
        sleep(min(value, max_wait))
