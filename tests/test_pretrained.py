"""``--video-weights imagenet``: torchvision's ResNet-18 weights fetched through torch.hub
from a loopback server (good, cached, corrupt, offline, stalled), what the model and the
checkpoint record of them, and what doctor says about the cache.

The served file is a real ResNet-18 state dict with random weights, named as torchvision
names its file (``resnet18-<first 8 hex digits of its SHA-256>.pth``), so torch.hub's
hash check runs on it as on the real one. torch's hub dir is a temporary folder.
"""

import hashlib
import io
import socket
import time

import pytest
import torch

from avfusion import pretrained
from avfusion.doctor import FAIL, OK, WARN, weights_check
from avfusion.model import FusionModel, ModelConfig
from jobs.bench.origin import RangeServer

VIDEO = ModelConfig(num_classes=2, modalities="video", video_weights="imagenet")


@pytest.fixture
def hub(tmp_path):
    """torch.hub's cache in a temporary folder (never the real ~/.cache/torch)."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(previous)


@pytest.fixture
def weights(tmp_path):
    """(file name, bytes, state dict, sha256) of a ResNet-18 state dict with random weights."""
    from torchvision.models import resnet18

    state = resnet18(weights=None).state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    return f"resnet18-{digest[:8]}.pth", data, state, digest


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def _model(url):
    return FusionModel(VIDEO, imagenet_url=url)


def test_production_url_is_torchvisions():
    from torchvision.models import ResNet18_Weights

    assert pretrained.imagenet_url() == ResNet18_Weights.IMAGENET1K_V1.url
    assert pretrained.hash_prefix(pretrained.imagenet_url()) == "f37072fd"
    with pytest.raises(ValueError, match="no SHA-256 prefix"):
        pretrained.hash_prefix("http://127.0.0.1/resnet18.pth")


def test_offline_warns_starts_random_and_says_so(hub, weights, closed_port):
    name, *_ = weights
    url = f"http://127.0.0.1:{closed_port}/{name}"
    with pytest.warns(UserWarning, match=r"unavailable \(Connection refused: .*RANDOM weights"):
        model = _model(url)
    init = model.video_init
    assert (init.loaded, init.sha256, init.source) == ("random (imagenet unavailable)", None, url)
    assert list(hub.iterdir()) == []  # no partial file left in the cache


def test_a_cached_file_is_used_without_the_network(hub, weights, closed_port):
    """The URL's port refuses connections: any network call would fall back to random."""
    name, data, state, digest = weights
    hub.mkdir(parents=True)
    (hub / name).write_bytes(data)
    model = _model(f"http://127.0.0.1:{closed_port}/{name}")
    torch.testing.assert_close(model.video.backbone.conv1.weight, state["conv1.weight"])
    assert (model.video_init.loaded, model.video_init.sha256) == ("imagenet", digest)


def test_a_corrupt_cached_file_is_refused_in_one_line(hub, weights, closed_port):
    name, data, *_ = weights
    hub.mkdir(parents=True)
    (hub / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(
        pretrained.WeightsError, match=f"corrupt.*does not start with {name[9:17]}.*delete it"
    ):
        _model(f"http://127.0.0.1:{closed_port}/{name}")


def test_a_rank_that_does_not_load_reads_nothing_and_does_not_warn(hub, weights, closed_port, recwarn):
    model = FusionModel(
        VIDEO, load_weights=False, imagenet_url=f"http://127.0.0.1:{closed_port}/{weights[0]}"
    )
    assert model.video_init.loaded.startswith("random (not read")
    assert not [w for w in recwarn if "RANDOM" in str(w.message)]


def test_a_weights_file_is_recorded_with_its_sha256(tmp_path, weights):
    _, data, state, digest = weights
    (tmp_path / "r18.pth").write_bytes(data)
    model = FusionModel(ModelConfig(num_classes=2, video_weights=str(tmp_path / "r18.pth")))
    assert model.video_init.record() == {
        "requested": str(tmp_path / "r18.pth"),
        "loaded": "file",
        "source": str(tmp_path / "r18.pth"),
        "sha256": digest,
        "reason": None,
    }
    assert FusionModel(ModelConfig(num_classes=2)).video_init.loaded == "random"
    assert FusionModel(ModelConfig(num_classes=2, modalities="audio")).video_init is None


def test_doctor_says_whether_the_weights_are_there(hub, weights, closed_port):
    name, data, *_ = weights
    url = f"http://127.0.0.1:{closed_port}/{name}"
    offline = weights_check("imagenet", url, timeout=1)
    assert offline.status == WARN and "not cached and offline" in offline.detail
    assert str(hub / name) in offline.fix
    hub.mkdir(parents=True)
    (hub / name).write_bytes(data)
    present = weights_check("imagenet", url)
    assert present.status == OK and f"cached at {hub / name}" in present.detail
    (hub / name).write_bytes(data[:100])
    corrupt = weights_check("imagenet", url)
    assert corrupt.status == FAIL and "corrupt" in corrupt.detail and "delete it" in corrupt.fix
    assert weights_check(str(hub / "absent.pth")).status == FAIL


@pytest.mark.slow  # a loopback server
def test_doctor_says_an_uncached_file_downloads_on_first_use(hub, weights, tmp_path):
    name, *_ = weights
    with RangeServer(tmp_path) as server:
        check = weights_check("imagenet", server.url(name))
    assert check.status == OK and "will download on first use" in check.detail
    assert not server.requests  # a TCP connect, no request


@pytest.mark.slow  # a loopback server
def test_download_once_then_from_the_cache(hub, weights, tmp_path):
    name, data, state, digest = weights
    (tmp_path / name).write_bytes(data)
    with RangeServer(tmp_path) as server:
        model = _model(server.url(name))
        assert server.requests[name] == 1
        torch.testing.assert_close(model.video.backbone.conv1.weight, state["conv1.weight"])
        assert (model.video_init.loaded, model.video_init.sha256) == ("imagenet", digest)
        assert [p.name for p in hub.iterdir()] == [name]  # no temp file beside it
        again = _model(server.url(name))
        assert server.requests[name] == 1, "the cached file is read, not downloaded again"
        assert again.video_init.sha256 == digest


@pytest.mark.slow  # a loopback server
@pytest.mark.parametrize("fault", ["altered", "truncated"])
def test_a_corrupt_download_is_refused_and_nothing_is_cached(hub, weights, tmp_path, fault):
    """Altered: same size, one bit off. Truncated: half the body, then the server closes
    (urllib reads it as the whole body)."""
    name, data, *_ = weights
    if fault == "altered":
        data = data[:-1] + bytes([data[-1] ^ 1])
    (tmp_path / name).write_bytes(data)
    with RangeServer(tmp_path) as server, pytest.raises(pretrained.WeightsError) as refused:
        if fault == "truncated":
            server.set_fault(name, fault, count=10)
        _model(server.url(name))
    message = str(refused.value)
    assert "\n" not in message and "corrupt" in message and "nothing was cached" in message
    assert list(hub.iterdir()) == []


@pytest.mark.slow  # a loopback server
@pytest.mark.parametrize(("fault", "reason"), [("404", "HTTP 404"), ("reset", "")])
def test_a_server_error_or_a_cut_transfer_is_unavailable(hub, weights, tmp_path, fault, reason):
    name, data, *_ = weights
    (tmp_path / name).write_bytes(data)
    with RangeServer(tmp_path) as server:
        server.set_fault(name, fault, count=10)
        state, init = pretrained.fetch_imagenet(server.url(name))
    assert state is None and init.loaded == "random (imagenet unavailable)" and reason in (init.reason or "")
    assert list(hub.iterdir()) == []


@pytest.mark.slow  # a loopback server
def test_a_stalled_server_is_given_up_on_within_the_timeout(hub, weights, tmp_path):
    """The server takes the request and answers nothing for 5 s: the 1 s timeout wins."""
    name, *_ = weights
    with RangeServer(tmp_path) as server:
        server.set_fault(name, "slow", count=10)
        t0 = time.monotonic()
        state, init = pretrained.fetch_imagenet(server.url(name), timeout_s=1)
        elapsed = time.monotonic() - t0
    assert state is None and init.reason == "no answer within 1 s"
    assert elapsed < 3, elapsed
    assert socket.getdefaulttimeout() is None  # the process default is restored
    assert list(hub.iterdir()) == []


@pytest.mark.slow  # the synthetic shards (Ray), a loopback server, three short training runs
def test_the_checkpoint_records_the_weights_a_run_started_from(
    hub, weights, tmp_path, synthetic_shards, closed_port, recwarn
):
    """Downloaded: imagenet and the file's sha256. Resumed: the first run's record, and
    nothing fetched. Offline: random (imagenet unavailable), never imagenet."""
    from dataclasses import replace

    from avfusion import checkpoint, train

    name, data, _, digest = weights
    served = tmp_path / "served"
    served.mkdir()
    (served / name).write_bytes(data)
    offline = f"http://127.0.0.1:{closed_port}/{name}"
    cfg = train.TrainConfig(
        shards=str(synthetic_shards),
        out=str(tmp_path / "run"),
        epochs=1,
        steps_per_epoch=1,
        batch_size=4,
        workers=0,
        model=ModelConfig(modalities="video", video_weights="imagenet", embed_dim=16),
    )
    with RangeServer(served) as server:
        train.run(cfg, "cpu", imagenet_url=server.url(name))
        assert server.requests[name] == 1
    record = checkpoint.load(tmp_path / "run" / "last.pt")["video_init"]
    assert (record["loaded"], record["sha256"]) == ("imagenet", digest)

    (hub / name).unlink()  # a resume that fetched would find neither the cache nor the server
    train.run(replace(cfg, epochs=2), "cpu", imagenet_url=offline)
    assert checkpoint.load(tmp_path / "run" / "last.pt")["video_init"] == record
    assert not [w for w in recwarn if "RANDOM" in str(w.message)]

    with pytest.warns(UserWarning, match="unavailable.*RANDOM"):
        train.run(replace(cfg, out=str(tmp_path / "offline")), "cpu", imagenet_url=offline)
    model, ckpt = checkpoint.model_from_checkpoint(tmp_path / "offline" / "last.pt")
    assert (
        ckpt["video_init"]["loaded"] == "random (imagenet unavailable)"
        and ckpt["video_init"]["sha256"] is None
    )


class _Hostile:
    """A loopback server that answers every request with ``headers`` and then calls
    ``body(send)`` until it returns or the client goes away."""

    def __init__(self, headers: bytes, body):
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.headers, self.body = headers, body
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\n" + self.headers + b"\r\n")
                    self.body(conn.sendall)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.mark.slow  # a loopback server
def test_a_server_that_trickles_is_given_up_at_the_deadline(hub, weights):
    """One byte every 0.2 s: every read is in time, the whole download never is."""
    name, data, *_ = weights

    def trickle(send):
        for byte in data:
            send(bytes([byte]))
            time.sleep(0.2)

    server = _Hostile(f"Content-Length: {len(data)}\r\n".encode(), trickle)
    try:
        t0 = time.monotonic()
        state, init = pretrained.fetch_imagenet(
            f"http://127.0.0.1:{server.port}/{name}", timeout_s=1, deadline_s=2
        )
    finally:
        server.close()
    assert state is None and init.loaded == pretrained.UNAVAILABLE
    assert init.reason == "the download took longer than 2 s" and time.monotonic() - t0 < 5
    assert list(hub.iterdir()) == []  # the partial file went with it


@pytest.mark.slow  # a loopback server
@pytest.mark.parametrize("announced", [True, False])
def test_a_body_far_larger_than_the_file_is_refused_and_nothing_kept(hub, weights, monkeypatch, announced):
    name, *_ = weights
    monkeypatch.setattr(pretrained, "MAX_DOWNLOAD_BYTES", 1 << 20)

    def endless(send):
        while True:
            send(bytes(65536))

    headers = b"Content-Length: 1000000000000000\r\n" if announced else b""
    server = _Hostile(headers, endless)
    try:
        with pytest.raises(pretrained.WeightsError, match="not the weights|more than 1 MiB"):
            pretrained.fetch_imagenet(f"http://127.0.0.1:{server.port}/{name}", timeout_s=2, deadline_s=20)
    finally:
        server.close()
    assert list(hub.iterdir()) == []


def test_partial_files_of_killed_downloads_are_removed_once_stale(hub, weights, closed_port):
    import os

    name, *_ = weights
    hub.mkdir(parents=True)
    stale, live = hub / f"{name}.0a.partial", hub / f"{name}.0b.partial"
    for p in (stale, live):
        p.write_bytes(b"x" * 10)
    old = time.time() - 3 * pretrained.DOWNLOAD_DEADLINE_S
    os.utime(stale, (old, old))
    state, _ = pretrained.fetch_imagenet(f"http://127.0.0.1:{closed_port}/{name}")
    assert state is None and not stale.exists() and live.exists()  # a live download is left alone


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_cache_entry_that_is_not_a_file_is_one_fail_line_and_one_refusal(hub, kind, weights):
    import os

    hub.mkdir(parents=True)
    entry = hub / pretrained.cache_file(pretrained.imagenet_url()).rsplit("/", 1)[-1]
    entry.mkdir() if kind == "dir" else os.mkfifo(entry)
    check = weights_check("imagenet")
    assert check.status == FAIL and "not a readable file" in check.detail, check
    with pytest.raises(pretrained.WeightsError, match="not a readable file"):
        pretrained.fetch_imagenet()
