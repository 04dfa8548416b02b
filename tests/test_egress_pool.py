"""A pool of proxies, tested by the traffic at a loopback origin that rate-limits per
client address: three HTTP proxies whose outgoing connections come from three loopback
addresses, each an egress with its own budget and block state in the governor. The
origin's log says which address fetched what and when; nothing is mocked."""

import json
import shutil

import pytest

from avfusion.synth import SynthSpec, write_clip
from jobs import preprocess
from jobs.bench.origin import RangeServer
from jobs.bench.proxy import HttpProxy

pytestmark = pytest.mark.slow
EGRESS = ("127.0.0.2", "127.0.0.6", "127.0.0.7")  # .3-.5 belong to other tests' hosts
COOLDOWN = 3.0
API_KEY = "apikey7c41e"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_clip(root / "v0.mp4", SynthSpec(duration=3.0, fps=10, width=96, height=72))
    for i in range(1, 9):
        shutil.copy(root / "v0.mp4", root / f"v{i}.mp4")
    return root


def _run(tmp_path, origin, proxies, name, threads=3):
    urls = tmp_path / f"{name}.csv"
    urls.write_text("url,id,label\n" + "".join(f"{origin.url(f'v{i}.mp4')},v{i},dog\n" for i in range(9)))
    pool = tmp_path / f"{name}-proxies.txt"
    pool.write_text("# the pool\n" + "".join(f"{p}\n" for p in proxies))
    config = tmp_path / "config.yaml"
    config.write_text(
        "clip:\n  clip_seconds: 2.0\n  frame_size: 32\n"
        "download:\n  socket_timeout: 5.0\n  max_attempts: 8\n  backoff_base: 0.05\n"
        f"governor:\n  min_spacing: 0.3\n  jitter: 0.0\n  cooldown_start: {COOLDOWN}\n"
        f"  cooldown_max: {2 * COOLDOWN}\n  proxy_rest: 1.0\n  max_blocked: 120\n"
    )
    out = tmp_path / name
    code = preprocess.main(
        [str(urls), "--out", str(out), "--proxies", str(pool), "--config", str(config)]
        + ["--executor", "local", "--threads", str(threads), "--shard-size", "9"]
    )
    return code, json.loads((out / "manifest.json").read_text())


def test_a_pool_of_three_ends_every_clip_and_rests_each_address_the_origin_limited(tmp_path, served, capsys):
    """The origin answers 429 to an address past 4 requests in 8 s (a clip costs two: the
    extractor's look and one ranged request for these small files). Every clip ends as a
    sample; every address carried clips and nothing went around the pool; after a 429
    an address starts no clip until its cooldown is over, while the others go on."""
    with RangeServer(served) as origin:
        origin.limit_per_peer(4, 8.0)
        proxies = [HttpProxy(source_host=h).__enter__() for h in EGRESS]
        try:
            # User names as a provider's API key: never in a name, the manifest or the summary.
            urls = [p.url.replace("http://", f"http://{API_KEY}{i}:@") for i, p in enumerate(proxies)]
            code, manifest = _run(tmp_path, origin, urls, "pool")
        finally:
            for p in proxies:
                p.__exit__(None, None, None)
        log = list(origin.log)
    assert code == 0 and manifest["num_samples"] == 9, manifest
    printed = capsys.readouterr()
    assert API_KEY not in json.dumps(manifest) + printed.out + printed.err
    peers = {r["peer"][0] for r in log}
    assert peers == set(EGRESS), peers  # every proxy carried clips, none went around the pool
    limited = [r for r in log if r["status"] == 429]
    assert limited, "the origin limited an address (else this test shows nothing)"
    for hit in limited:
        ip = hit["peer"][0]
        # A clip's attempt starts with the extractor's request (no Range); requests
        # granted before the 429 was reported may land just after it.
        after = [r["t"] - hit["t"] for r in log if r["peer"][0] == ip and not r["headers"].get("Range")]
        starts = [t for t in after if 0.8 < t < COOLDOWN - 0.3]
        assert not starts, f"{ip} started a clip {starts} s after its 429, in its cooldown"
    downloads = manifest["downloads"]
    print("429s by address:", {ip: sum(r["peer"][0] == ip for r in limited) for ip in EGRESS}, downloads)
    assert downloads["blocks"].get("blocked_rate_limit", 0) >= 1
    assert set(downloads["grants_by_egress"]) == {f"proxy {p.url.split('://')[1]}" for p in proxies}


def test_a_dead_proxy_in_the_pool_is_a_proxy_fault_and_the_others_carry_every_clip(tmp_path, served):
    """One proxy refuses connections, one answers 407 to everything: both are proxy faults
    (no block of the source, no cooldown of it), they rest, and the working one carries
    every clip."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    with RangeServer(served) as origin, HttpProxy(source_host=EGRESS[0]) as good:
        with HttpProxy(source_host=EGRESS[1]) as wants_auth:
            wants_auth.refuse(407)
            # One thread, the broken proxies listed first: the working one, never used yet,
            # must not wait for them (they are other addresses, not a blocked account).
            code, manifest = _run(tmp_path, origin, [dead, wants_auth.url, good.url], "dead", threads=1)
        peers = {r["peer"][0] for r in origin.log}
    assert code == 0 and manifest["num_samples"] == 9, manifest
    assert peers == {EGRESS[0]}, peers
    downloads = manifest["downloads"]
    assert downloads["blocks"] == {} and downloads["cooldowns"] == 0 and downloads["proxy_faults"] >= 2
    by_egress = downloads["grants_by_egress"]
    assert by_egress[f"proxy {good.url.split('://')[1]}"] >= 9, by_egress


def test_without_a_proxy_the_budget_is_the_egress_id_or_the_nodes_ip(tmp_path, served):
    """No proxy: every grant is counted against one egress, named by ``--egress-id``
    when given (nodes behind one NAT share it), else by this node's IP address."""
    from avfusion.download import node_address

    urls = tmp_path / "urls.csv"
    config = tmp_path / "config.yaml"
    config.write_text("clip:\n  clip_seconds: 2.0\n  frame_size: 32\ngovernor:\n  min_spacing: 0.0\n")
    grants = {}
    with RangeServer(served) as origin:
        urls.write_text("url,id,label\n" + "".join(f"{origin.url(f'v{i}.mp4')},v{i},dog\n" for i in range(3)))
        for name, extra in (("ip", []), ("nat", ["--egress-id", "office-nat"])):
            out = tmp_path / name
            argv = [str(urls), "--out", str(out), "--config", str(config), "--executor", "local", *extra]
            assert preprocess.main(argv) == 0
            grants[name] = json.loads((out / "manifest.json").read_text())["downloads"]["grants_by_egress"]
    assert grants == {"ip": {node_address(): 3}, "nat": {"office-nat": 3}}, grants
