"""The download governor: budget, spacing, block cooldowns, probes and the stop."""

import pickle
import threading

import pytest

from avfusion.governor import Governor, GovernorConfig, SourceBlocked, wait_for_turn

CFG = GovernorConfig(
    per_node_per_hour=3600,
    min_spacing=2.0,
    jitter=0.5,
    cooldown_start=60.0,
    cooldown_max=240.0,
    max_blocked=1000.0,
)


def test_spacing_with_jitter_per_node_and_independent_nodes():
    g = Governor(CFG, seed=1)
    assert g.acquire("a", now=0.0) == ("go", 0.0)
    verdict, wait = g.acquire("a", now=0.5)
    assert verdict == "wait" and 1.5 <= wait <= 2.5  # 2 s * (1 + 0.5 U) after the grant
    assert g.acquire("b", now=0.5) == ("go", 0.0)  # another node has its own spacing
    assert g.acquire("a", now=3.01) == ("go", 0.0)


def test_hourly_budget_per_node_and_global():
    g = Governor(GovernorConfig(per_node_per_hour=2, global_per_hour=3, min_spacing=0.0), seed=0)
    assert [g.acquire("a", now=t)[0] for t in (0, 1, 2)] == ["go", "go", "wait"]
    assert g.acquire("a", now=2)[1] == pytest.approx(3598)  # the first grant leaves the window
    assert g.acquire("b", now=3)[0] == "go"
    verdict, wait = g.acquire("c", now=4)  # the global budget (the account) is spent
    assert verdict == "wait" and wait == pytest.approx(3596)
    assert g.acquire("a", now=3600.5)[0] == "go"


def test_block_pauses_the_node_then_one_probe_then_resume():
    g = Governor(CFG, seed=0)
    g.acquire("a", now=0.0)
    g.acquire("b", now=0.0)
    g.report("a", "blocked_bot_check", now=1.0)
    verdict, wait = g.acquire("a", now=2.0)
    assert verdict == "wait" and wait == pytest.approx(59.0)  # the first cooldown: 60 s
    assert g.acquire("b", now=3.5)[0] == "go"  # another node is not blocked
    assert g.acquire("a", now=61.0) == ("go", 0.0)  # the probe
    assert g.acquire("a", now=61.5)[0] == "wait"  # one probe at a time
    g.report("a", None, now=70.0)
    assert g.acquire("a", now=75.0) == ("go", 0.0)  # resumed
    stats = g.stats(now=75.0)
    assert (stats["cooldowns"], stats["probes"], stats["blocked_seconds"]) == (1, 1, 69.0)
    assert stats["blocks"] == {"blocked_bot_check": 1} and stats["blocked_nodes"] == []


def test_cooldown_doubles_up_to_the_maximum_and_a_long_block_stops_the_job():
    g = Governor(CFG, seed=0)
    g.report("a", "blocked_session", now=0.0)
    t, cooldowns = 0.0, []
    while True:
        verdict, wait = g.acquire("a", now=t)
        if verdict == "stop":
            break
        if verdict == "wait":
            cooldowns.append(wait) if wait > 5 else None
            t += wait
            continue
        g.report("a", "blocked_session", now=t)  # every probe is blocked again
    assert cooldowns[:4] == [60.0, 120.0, 240.0, 240.0]
    assert g.stop_kind() == "blocked_session" and wait >= 1000.0
    assert g.acquire("b", now=t)[0] == "stop"  # every caller is told to stop
    with pytest.raises(SourceBlocked) as exc:
        wait_for_turn(g, "b", sleep=lambda s: None)
    assert exc.value.kind == "blocked_session"
    assert pickle.loads(pickle.dumps(exc.value)).kind == "blocked_session"


def test_when_all_nodes_are_blocked_new_nodes_wait_too():
    g = Governor(CFG, seed=0)
    g.acquire("a", now=0.0)
    g.report("a", "blocked_rate_limit", now=0.0)
    verdict, wait = g.acquire("new", now=10.0)
    assert verdict == "wait" and wait == pytest.approx(50.0)


def test_a_single_403_is_not_a_block_but_a_streak_is():
    g = Governor(GovernorConfig(min_spacing=0.0, forbidden_streak=3), seed=0)
    g.report("a", "blocked_forbidden", now=0.0)
    g.report("a", "blocked_forbidden", now=1.0)
    assert g.acquire("a", now=2.0)[0] == "go"
    g.report("a", None, now=2.0)  # a success breaks the streak
    for t in (3.0, 4.0):
        g.report("a", "blocked_forbidden", now=t)
    assert g.acquire("a", now=5.0)[0] == "go"
    g.report("a", "blocked_forbidden", now=5.0)
    assert g.acquire("a", now=6.0)[0] == "wait"


@pytest.mark.parametrize("kind", ["content_unavailable", "no_format"])
def test_a_suspect_answer_is_the_clip_s_but_a_streak_across_clips_is_a_block(kind):
    g = Governor(GovernorConfig(min_spacing=0.0, suspect_streak=3, cooldown_start=60.0), seed=0)
    for t in range(5):  # one clip's retries, however many, are one clip
        g.report("a", kind, now=float(t), clip="v0")
    g.report("a", kind, now=5.0, clip="v1")
    assert g.acquire("a", now=6.0)[0] == "go"
    g.report("a", None, now=6.0)  # a success breaks the streak
    g.report("a", kind, now=7.0, clip="v2")
    g.report("a", kind, now=8.0, clip="v3")
    g.report("b", kind, now=8.0, clip="v4")  # another node's answers are its own
    assert g.acquire("a", now=9.0)[0] == "go"
    g.report("a", kind, now=9.0, clip="v4")
    verdict, wait = g.acquire("a", now=10.0)
    assert verdict == "wait" and wait == pytest.approx(59.0)
    assert g.stats(now=10.0)["blocks"] == {kind: 1} and g.stats(now=10.0)["blocked_nodes"] == ["a"]
    assert g.acquire("a", now=70.0)[0] == "go"  # the probe
    g.report("a", kind, now=70.0, clip="v9")  # answered the same way: still blocked, longer
    verdict, wait = g.acquire("a", now=71.0)
    assert verdict == "wait" and wait == pytest.approx(119.0)


def test_the_clips_that_made_a_block_cannot_fail_its_probe_and_suspects_count_together():
    """A dead video's own retries are no evidence: as probes they tell nothing, so five
    dead videos cannot double the cooldown past max_blocked (they stopped a job); both
    suspect kinds make one streak; a 403 streak counts videos, not one video's retries."""
    g = Governor(GovernorConfig(min_spacing=0.0, suspect_streak=4, cooldown_start=60.0), seed=0)
    for t, (clip, kind) in enumerate(zip("abcd", ["content_unavailable", "no_format"] * 2, strict=True)):
        g.report("n", kind, now=float(t), clip=clip)
    assert g.acquire("n", now=4.0)[0] == "wait"  # blocked by a mixed streak of four videos
    for t in (70.0, 140.0, 210.0):  # d's retries probe after each cooldown: no level is added
        assert g.acquire("n", now=t)[0] == "go"
        g.report("n", "content_unavailable", now=t, clip="d")
    assert g.acquire("n", now=211.0)[0] == "go"  # still the first cooldown's length: probe again
    g.report("n", None, now=211.0, clip="e")  # another video got through: the block is lifted
    assert g.stats(now=212.0)["blocked_nodes"] == [] and g.stats(now=212.0)["cooldowns"] == 1

    g = Governor(GovernorConfig(min_spacing=0.0, forbidden_streak=2, cooldown_start=60.0), seed=0)
    for t in range(4):
        g.report("n", "blocked_forbidden", now=float(t), clip="one-video")
    assert g.acquire("n", now=5.0)[0] == "go"  # one video's 403s, however many, are not a block
    g.report("n", "blocked_forbidden", now=5.0, clip="another")
    assert g.acquire("n", now=6.0)[0] == "wait"


def test_rejected_cookies_stop_every_node_at_once():
    g = Governor(CFG, seed=0)
    assert g.acquire("a", now=0.0)[0] == "go"
    g.report("a", "cookies_invalid", now=0.0)
    assert g.acquire("b", now=1.0) == ("stop", 0.0)
    assert g.stop_kind() == "cookies_invalid" and g.stats(now=1.0)["stopped"] == "cookies_invalid"
    with pytest.raises(SourceBlocked, match="cookies_invalid"):
        wait_for_turn(g, "a", sleep=lambda s: None)


def test_threads_share_one_governor_and_never_exceed_the_budget():
    g = Governor(GovernorConfig(per_node_per_hour=3600 * 20, min_spacing=0.05, jitter=0.0), seed=0)
    granted: list[float] = []
    import time

    def worker():
        for _ in range(5):
            wait_for_turn(g, "a")
            granted.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    granted.sort()
    gaps = [b - a for a, b in zip(granted, granted[1:], strict=False)]
    # a gap is read after each call returns: a thread descheduled between its grant and
    # its clock read shifts one gap by that delay (0.0486 seen on a loaded 2-core
    # machine); a governor that let threads through together would show gaps near 0
    assert len(granted) == 20 and min(gaps) >= 0.04, min(gaps)
    assert g.stats()["grants"] == 20


def test_no_wait_outlives_max_blocked():
    """A 300 s cooldown with max_blocked 10: every node is told to come back by the stop
    time, not after the cooldown (the job once stopped 62 s after a 10 s max_blocked)."""
    g = Governor(GovernorConfig(cooldown_start=300.0, max_blocked=10.0, min_spacing=0.0), seed=0)
    g.acquire("a", now=0.0)
    g.report("a", "blocked_rate_limit", now=1.0)
    assert g.acquire("a", now=2.0) == ("wait", pytest.approx(9.0))  # the stop, not the cooldown
    assert g.acquire("new", now=3.0) == ("wait", pytest.approx(8.0))
    g2 = Governor(GovernorConfig(per_node_per_hour=1, max_blocked=10.0, min_spacing=0.0), seed=0)
    g2.acquire("a", now=0.0)
    g2.acquire("b", now=0.0)
    g2.report("b", "blocked_session", now=1.0)
    assert g2.acquire("a", now=2.0) == ("wait", pytest.approx(9.0))  # its hourly budget: still the stop
    assert g2.acquire("a", now=11.0)[0] == "stop"


def test_wait_for_turn_stops_within_max_blocked_on_the_real_clock():
    import time

    g = Governor(GovernorConfig(cooldown_start=300.0, max_blocked=0.5, min_spacing=0.0), seed=0)
    g.acquire("a")
    g.report("a", "blocked_bot_check")
    t0 = time.monotonic()
    with pytest.raises(SourceBlocked):
        wait_for_turn(g, "a")
    assert time.monotonic() - t0 < 1.5


def test_a_waiter_on_its_budget_hears_a_later_block_stop_within_seconds():
    """Told to wait an hour for its budget before any block began, a thread still asks
    again often enough to stop when another node's block outlasts max_blocked."""
    import time

    g = Governor(GovernorConfig(per_node_per_hour=1, max_blocked=0.5, min_spacing=0.0), seed=0)
    g.acquire("a")
    g.acquire("b")
    t0 = time.monotonic()
    timer = threading.Timer(0.2, g.report, args=("b", "blocked_session"))
    timer.start()
    with pytest.raises(SourceBlocked):
        wait_for_turn(g, "a")
    timer.join()
    assert time.monotonic() - t0 < 3.5


# ----------------------------------------------------------------------------- a pool


def test_a_pool_spreads_grants_and_each_egress_keeps_its_own_spacing():
    g = Governor(GovernorConfig(per_node_per_hour=3600, min_spacing=2.0, jitter=0.0), seed=0)
    pool = ("p1", "p2", "p3")
    granted = [g.acquire_any(pool, now=0.0) for _ in range(4)]
    assert [v for v, _, _ in granted[:3]] == ["go"] * 3
    assert sorted(e for _, _, e in granted[:3]) == ["p1", "p2", "p3"]  # one each, not three on p1
    assert granted[3] == ("wait", 2.0, "")  # every egress spaced: the pool waits for the first free
    assert g.acquire_any(pool, now=2.0)[0] == "go"


def test_a_blocked_egress_rests_while_the_others_work_then_gets_its_probe_first():
    g = Governor(CFG, seed=0)
    pool = ("p1", "p2")
    for t in (0.0, 0.1):
        g.acquire_any(pool, now=t)
    g.report("p1", "blocked_rate_limit", now=1.0)
    grants = [g.acquire_any(pool, now=t) for t in (3.0, 6.0, 9.0, 12.0)]
    assert {e for v, _, e in grants if v == "go"} == {"p2"}  # p1 rests for its 60 s cooldown
    assert g.stats(now=12.0)["blocked_nodes"] == ["p1"]
    assert g.acquire_any(pool, now=61.0) == ("go", 0.0, "p1")  # the probe goes before p2's turn
    assert g.stats(now=61.0)["probes"] == 1
    g.report("p1", None, now=62.0)
    assert g.stats(now=62.0)["blocked_nodes"] == []


def test_a_pool_stops_only_when_every_egress_has_been_blocked_for_max_blocked():
    g = Governor(GovernorConfig(cooldown_start=200.0, cooldown_max=400.0, max_blocked=100.0, min_spacing=0.0))
    pool = ("p1", "p2")
    g.acquire_any(pool, now=0.0)
    g.acquire_any(pool, now=0.0)
    g.report("p1", "blocked_bot_check", now=1.0)
    assert g.acquire_any(pool, now=2.0)[0] == "go"  # p2 works on
    g.report("p2", "blocked_rate_limit", now=11.0)
    # p1 reaches max_blocked at 101 but p2 only at 111: the pool is told to come back then
    assert g.acquire_any(pool, now=20.0) == ("wait", 91.0, "")
    assert g.acquire_any(pool, now=101.5) == ("wait", 9.5, "")
    assert g.acquire_any(pool, now=111.0)[0] == "stop" and g.stop_kind() in (
        "blocked_bot_check",
        "blocked_rate_limit",
    )


def test_a_dead_proxy_neither_starves_a_fresh_one_nor_stops_the_job_the_other_carries():
    """One caller, the dead proxy listed first: it fails, rests, and the proxy never used
    yet carries on (a pool's egresses are distinct addresses: no "all others blocked"
    wait); hours later the dead one still rests and the job has not stopped."""
    g = Governor(GovernorConfig(min_spacing=1.0, jitter=0.0, proxy_rest=30.0, max_blocked=3600.0), seed=0)
    pool = ("dead", "good")
    t, grants = 0.0, {"dead": 0, "good": 0}
    while t < 3 * 3600:
        verdict, wait, egress = g.acquire_any(pool, now=t)
        assert verdict != "stop", (t, g.stats(now=t))
        if verdict == "go":
            grants[egress] += 1
            g.report(egress, "proxy_error" if egress == "dead" else None, now=t + 0.5)
        t += 1.0 if verdict == "go" else wait
    assert grants["good"] >= 3 * 300 - 1 and grants["dead"] < 20, grants  # the good one spends its budget
    stats = g.stats(now=t)
    assert stats["blocks"] == {} and stats["cooldowns"] == 0 and stats["blocked_seconds"] == 0.0
    assert stats["resting_proxies"] == ["dead"] and stats["proxy_faults"] == grants["dead"]


def test_a_lone_address_still_waits_when_every_other_node_is_blocked():
    """A node's own address (asked for alone) keeps the account rule; a failed proxy is
    not a source block and does not count towards it."""
    g = Governor(CFG, seed=0)
    g.acquire("n1", now=0.0)
    g.report("n1", "blocked_bot_check", now=1.0)
    assert g.acquire("n2", now=2.0)[0] == "wait"
    h = Governor(CFG, seed=0)
    h.acquire("p", now=0.0)
    h.report("p", "proxy_error", now=1.0)
    assert h.acquire("n2", now=2.0)[0] == "go"


def test_acquire_any_is_picklable_through_a_proxy_and_refuses_an_empty_pool():
    g = Governor(CFG, seed=0)
    assert pickle.loads(pickle.dumps(g.acquire_any(("a", "b"), now=0.0))) == ("go", 0.0, "a")
    with pytest.raises(ValueError, match="no egress"):
        g.acquire_any((), now=0.0)
    real = Governor(CFG, seed=0)  # on its own clock: a is spaced after its grant, b goes
    assert [wait_for_turn(real, ("a", "b"), sleep=lambda s: None) for _ in range(2)] == ["a", "b"]


def test_a_transfer_retry_is_granted_on_its_own_egress_and_never_stops_a_pool():
    """``acquire_again`` (a transfer retried on the egress that extracted): a grant when
    the egress may go, its spacing as a wait, "no" once it is blocked. Asked for one proxy
    of a pool it makes no group of that proxy: while the pool's other proxy works, the
    retried one's long block does not stop the job (a group asked alone would)."""
    t = [0.0]
    cfg = GovernorConfig(min_spacing=1.0, jitter=0.0, cooldown_start=60, cooldown_max=60, max_blocked=300)
    g = Governor(cfg, clock=lambda: t[0], seed=0)
    a, b = "proxy a:1", "proxy b:1"
    first = g.acquire_any([a, b])[2]
    other = b if first == a else a
    assert g.acquire_again(first) == ("wait", 1.0)
    t[0] += 1.0
    assert g.acquire_again(first) == ("go", 0.0) and g.stats()["grants_by_egress"] == {first: 2}
    g.report(first, "blocked_rate_limit", clip="c1")
    assert g.acquire_again(first) == ("no", 0.0), "a blocked egress takes no retry"
    for step in range(200):  # 1000 s: the retried proxy blocked for good, the other works
        t[0] += 5.0
        verdict, _, egress = g.acquire_any([a, b])
        assert verdict != "stop", (t[0], g.stop_kind())
        if verdict == "go":
            g.report(egress, "blocked_rate_limit" if egress == first else None, clip=f"c{step}")
    assert g.stats()["grants_by_egress"][other] > 100
