"""One download budget and one block state for a whole preprocess job.

YouTube limits a *source* (an IP address, a session, an account), not a clip: about
300 videos an hour as a guest and about 2,000 with an account, 5-10 s apart (yt-dlp's
wiki, "Extractors"). When it blocks ("Sign in to confirm you're not a bot", "This
content isn't available, try again later", HTTP 429, media-host 403s) every further
request from that source only prolongs the block. So every download attempt asks the
governor first (``acquire``) and tells it how it went (``report``).

Budgets and blocks are kept per *egress address* (called a node below): each proxy of
the job's pool, or a node's own address (its IP, or the ``--egress-id`` nodes behind one
NAT share). A download on a pool asks for any of them (``acquire_any``) and goes out by
the one granted.

- **Budget.** Per node: at most ``per_node_per_hour`` grants in any sliding hour and at
  least ``min_spacing * (1 + jitter * U)`` seconds between two grants. Globally (the
  account, when cookies are shared): ``global_per_hour`` and ``global_spacing``. A pool
  is granted where a probe is due first, else where the fewest grants are in the window.
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
- **Proxy faults.** A proxy that fails by itself (refuses the connection, wants
  credentials, answers 403 or 5xx to its own CONNECT) is not the source blocking us: it
  is no block (no cooldown, no blocked seconds), but its egress rests ``proxy_rest``
  seconds (doubling like a cooldown) and is tried last while the pool's others work.
  Egresses of a pool are distinct addresses: one never used yet does not wait for the
  others' blocks (only a node's own address does, the account rule above).
- **Rejected cookies.** When YouTube says the account's cookies are no longer valid,
  waiting does not help (they must be exported again): the job stops at once.
- **Stop.** When the egresses a download may use (a node's own address, or the job's
  whole pool) have all been blocked for ``max_blocked`` seconds, the governor answers
  every caller ``stop``: the job ends cleanly and a re-run resumes it. One dead proxy of a
  pool does not stop a job the others carry.

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
from collections.abc import Callable, Sequence
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
# The egress's own proxy failed (refused, 407, its own 403/5xx): not YouTube, so not a
# block of the source, but that egress rests (``proxy_rest``) while the pool's others work.
PROXY_FAULT = "proxy_error"

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
    proxy_rest: float = bounded(30.0, ge=0, le=7 * 86400)  # first rest of a failed proxy, doubling
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
    grants: deque[float] = field(default_factory=deque)  # in the budget's window
    granted: int = 0  # since the start
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
    cooldowns: int  # of source blocks (a failed proxy's rest is not one)
    blocked_seconds: float  # finished source blocks only, summed over egresses
    blocks: dict[str, int]  # block signals by kind
    proxy_faults: int  # answers that were the proxy's own failure, not the source's


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
        self._groups: set[tuple[str, ...]] = set()  # egresses asked for together: a node's, or a pool
        self._grants: deque[float] = deque()
        self._next_global = 0.0
        self._stopped: tuple[str, float] | None = None
        self._start = clock()
        self._anonymous = itertools.count()  # reports that name no clip are each a clip of their own
        self._stats: _Stats = {
            "grants": 0,
            "probes": 0,
            "cooldowns": 0,
            "blocked_seconds": 0.0,
            "blocks": {},
            "proxy_faults": 0,
        }

    def acquire(self, node: str, now: float | None = None) -> tuple[str, float]:
        """``("go", 0)``: download now; ``("wait", s)``: ask again in ``s`` seconds;
        ``("stop", blocked_seconds)`` with the kind in ``stop_kind()``: stop the job."""
        verdict, value, _ = self.acquire_any((node,), now)
        return verdict, value

    def acquire_any(self, egresses: Sequence[str], now: float | None = None) -> tuple[str, float, str]:
        """``acquire`` for a pool: a grant on whichever of ``egresses`` (the job's
        proxies) may go now, as ``("go", 0, egress)``; a probe first (a cooldown that
        ended must learn whether its block lifted), else the egress with the fewest
        grants in the window (the pool's load spread). ``("wait", s, "")`` when none may
        go for ``s`` seconds; ``("stop", blocked_seconds, "")`` as ``acquire``."""
        if not egresses:
            raise ValueError("acquire_any: no egress given")
        with self._lock:
            now = self._clock() if now is None else now
            nodes = {e: self._nodes.setdefault(e, _Node()) for e in egresses}
            self._groups.add(tuple(sorted(nodes)))
            if self._check_stop(now):
                assert self._stopped is not None
                return "stop", self._stopped[1], ""
            # A pool's egresses are distinct addresses: a fresh one never waits for the others'
            # blocks; a node's own address does (every node blocked is the account's block).
            lone = len(nodes) == 1
            best: tuple[int, int, str] | None = None  # (rank, grants, egress)
            shortest = float("inf")
            for e, n in nodes.items():
                wait = self._block_wait(e, n, now, lone)
                probe = wait == 0.0 and n.blocked_kind is not None
                if not probe and wait <= 0:
                    wait = self._budget_wait(n, now)
                if wait > 0:
                    shortest = min(shortest, wait)
                    continue
                # A due probe of a source block first (it says whether the block lifted);
                # a failed proxy's probe last (a working proxy should carry the clip).
                rank = (0 if n.blocked_kind != PROXY_FAULT else 2) if probe else 1
                if best is None or (rank, len(n.grants)) < best[:2]:
                    best = (rank, len(n.grants), e)
            if best is None:
                # Never past the moment a block reaches max_blocked: a caller told to come
                # back after a 300 s cooldown must hear "stop" when max_blocked is 10 s.
                return "wait", min(shortest, self._until_stop(now)), ""
            egress = best[2]
            n = nodes[egress]
            if n.blocked_kind:  # the cooldown is over: one probe
                n.probing = True
                self._stats["probes"] += 1
            return (*self._grant(n, now), egress)

    def acquire_again(self, egress: str, now: float | None = None) -> tuple[str, float]:
        """A grant for a transfer retried on ``egress`` (its format URLs are bound to the
        address that extracted them): ``("go", 0)``; ``("wait", s)`` when only the
        egress's spacing or budget holds it; ``("no", 0)`` when it is blocked or resting,
        or the job stopped: formats from a blocked address are worth no cooldown, and the
        next attempt extracts again on whichever egress may go. Unlike ``acquire_any`` it
        registers no group: one egress of a pool asked alone must not become a group
        whose block stops the job."""
        with self._lock:
            now = self._clock() if now is None else now
            n = self._nodes.setdefault(egress, _Node())
            if self._stopped or n.blocked_kind:
                return "no", 0.0
            wait = self._budget_wait(n, now)
            return ("wait", wait) if wait > 0 else self._grant(n, now)

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
            if kind == PROXY_FAULT:
                self._stats["proxy_faults"] += 1
                self._block(n, kind, now, set(), first=self.cfg.proxy_rest)
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
                if n.blocked_kind != PROXY_FAULT:
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
                now - n.blocked_since
                for n in self._nodes.values()
                if n.blocked_since is not None and n.blocked_kind != PROXY_FAULT
            )
            out["blocked_seconds"] = round(out["blocked_seconds"], 3)
            out["downloads_per_hour"] = round(out["grants"] * 3600.0 / max(now - self._start, 1e-9), 1)
            out["blocked_nodes"] = sorted(
                k for k, n in self._nodes.items() if n.blocked_kind not in (None, PROXY_FAULT)
            )
            out["resting_proxies"] = sorted(
                k for k, n in self._nodes.items() if n.blocked_kind == PROXY_FAULT
            )
            out["grants_by_egress"] = {k: n.granted for k, n in sorted(self._nodes.items()) if n.granted}
            out["stopped"] = self._stopped[0] if self._stopped else None  # as the callers were told
            return out

    def _block(self, n: _Node, kind: str, now: float, culprits: set[str], first: float | None = None) -> None:
        """Rest ``n`` for a cooldown doubling from ``first`` (a block of the source:
        ``cooldown_start``) up to ``cooldown_max``."""
        source = kind != PROXY_FAULT
        if source:
            self._stats["blocks"][kind] = self._stats["blocks"].get(kind, 0) + 1
        if n.blocked_kind and not n.probing and now < n.blocked_until:
            n.culprits |= culprits
            return  # attempts granted before the block reporting late: same cooldown
        n.culprits = culprits
        n.level += 1
        start = self.cfg.cooldown_start if first is None else first
        cooldown = min(self.cfg.cooldown_max, start * 2 ** (n.level - 1))
        n.blocked_kind, n.blocked_until, n.probing = kind, now + cooldown, False
        n.blocked_since = n.blocked_since if n.blocked_since is not None else now
        self._stats["cooldowns"] += source

    def _block_wait(self, name: str, n: _Node, now: float, lone: bool) -> float:
        """Seconds this egress must wait for a block to lift; 0 when it may go (or probe).
        A ``lone`` egress (a node's own address) never used yet waits while every other
        one has a source block: the block is then the account's."""
        if n.blocked_kind:
            if n.probing:
                return max(1.0, self.cfg.min_spacing)  # one probe at a time
            return max(0.0, n.blocked_until - now)
        if lone and not n.grants:
            others = [o for k, o in self._nodes.items() if k != name]
            if others and all(o.blocked_kind not in (None, PROXY_FAULT) for o in others):
                return max(0.0, min(o.blocked_until for o in others) - now) or max(1.0, self.cfg.min_spacing)
        return 0.0

    def _check_stop(self, now: float) -> bool:
        """Stop the governor when a group of egresses asked for together (a node's own
        address, or the job's pool of proxies) has been blocked whole for ``max_blocked``:
        one dead proxy of a pool does not stop a job the others carry. True when stopped."""
        if self._stopped:
            return True
        for group in self._groups:
            members = [self._nodes[e] for e in group]
            since = [n.blocked_since for n in members]
            if all(t is not None and now - t >= self.cfg.max_blocked for t in since):
                kinds = [n.blocked_kind for n in members if n.blocked_kind]
                kind = next((k for k in kinds if k != PROXY_FAULT), kinds[0])
                self._stopped = (kind, now - max(t for t in since if t is not None))
                return True
        return False

    def _until_stop(self, now: float) -> float:
        """Seconds until a group blocked whole reaches ``max_blocked`` (inf: none is)."""
        ends = []
        for group in self._groups:
            since = [self._nodes[e].blocked_since for e in group]
            if all(t is not None for t in since):
                ends.append(max(t for t in since if t is not None) + self.cfg.max_blocked)
        return max(0.0, min(ends) - now) if ends else float("inf")

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
        n.granted += 1
        self._grants.append(now)
        n.next_at = now + self.cfg.min_spacing * (1 + self.cfg.jitter * self._rng.random())
        self._next_global = now + self.cfg.global_spacing
        self._stats["grants"] += 1
        return "go", 0.0


class GovernorClient(Protocol):
    """What a download asks of the governor: a :class:`Governor` or a proxy to one."""

    def acquire_any(self, egresses: Sequence[str]) -> tuple[str, float, str]: ...

    def acquire_again(self, egress: str) -> tuple[str, float]: ...

    def report(self, node: str, kind: str | None, *, clip: str | None = None) -> None: ...

    def stop_kind(self) -> str | None: ...


def wait_for_turn(
    governor: GovernorClient,
    egresses: str | Sequence[str],
    sleep: Callable[[float], None] = time.sleep,
    max_wait: float = 2.0,
) -> str:
    """Block the calling thread until ``governor`` grants one of ``egresses`` (a node's
    address, or the job's proxies) a download, and return the one granted; raise
    ``SourceBlocked`` when it says stop. ``governor`` may be a proxy to a remote one.
    Asks again at least every ``max_wait`` seconds: a wait answered before another
    egress's block began (a spent hourly budget) must not outlive that block's
    ``max_blocked``."""
    pool = (egresses,) if isinstance(egresses, str) else tuple(egresses)
    while True:
        verdict, value, egress = governor.acquire_any(pool)
        if verdict == "go":
            return egress
        if verdict == "stop":
            raise SourceBlocked(governor.stop_kind() or "blocked", value)
        sleep(min(value, max_wait))
