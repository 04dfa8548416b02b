"""``avfusion bench gpu``: one prepared, time-bounded check of the CUDA paths, for a GPU
machine lent for a few minutes.

Steps, in priority order, each in its own process under its own cap, all under one
``--budget`` (a step that no longer fits is skipped and says so; one that overruns is
killed after dumping its threads' stacks into its log):

    env      driver, torch, CUDA, cuDNN, the JPEG decoder and whether it runs on the device
    decode   the stream race (pytorch/vision#9606): reads queued on the caller's stream must
             not see the decode's writes; raw decoders vs ``avfusion.jpeg``; decode rates
    train    the ``vggsound`` recipe at 224²: steps fed by the real loader (workers, pinned
             compact batches, decode + augmentation on the device) vs the same steps on one
             prepared batch (model only); device time by CUDA events; frames unchanged while
             steps are queued; the losses (finite?); peak memory
    syncs    host syncs per training step, by call site (CUDA's sync debug mode)
    gabor    the audio front end's error vs fp64 on the CPU, TF32 allowed vs ours (off)
    ddp      one-rank NCCL process group with device_id + DDP over the real model
    loader   ``avfusion bench loader`` on the device
    label    ``avfusion bench label`` (needs Ray and PyAV)
    tests    the test files that take CUDA where present

Results under ``--out``: ``<step>.json`` and ``<step>.log`` per step, and ``gpu.md``,
``gpu.json``, ``gpu.png`` (via ``jobs.bench.common.write_results``). A step whose
package is missing (the GPU machine may lack PyAV, Ray, webdataset, soundfile,
tensorboardX: README says which wheels to carry) is skipped with one line. With
``--device cpu`` every step runs on the CPU (the CUDA-only measurements say so).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS: dict[str, tuple[int, tuple[str, ...]]] = {  # name: (cap in seconds, modules it needs)
    "env": (30, ()),
    "decode": (90, ()),
    "train": (180, ("webdataset", "soundfile")),
    "syncs": (60, ("webdataset", "soundfile")),
    "gabor": (30, ()),
    "ddp": (60, ("webdataset", "soundfile")),
    "loader": (120, ("webdataset", "soundfile", "av")),
    "label": (120, ("ray", "av", "pyarrow")),
    "tests": (120, ("pytest", "webdataset", "soundfile")),
}
TEST_FILES = [
    "tests/test_gpu_paths.py",
    "tests/test_augment.py",
    "tests/test_loader.py",
    "tests/test_train_loop.py",
    "tests/test_model.py",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avfusion bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench-gpu", help="results folder (a local path)")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--shards", help="224² shards (default: built from the bundled clips; needs PyAV)")
    p.add_argument("--budget", type=int, default=540, help="seconds for all steps together")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per side")
    p.add_argument("--batch-size", type=int, help="default: the vggsound recipe's")
    p.add_argument("--clips", type=int, default=128, help="bundled clips when building shards")
    p.add_argument("--skip", default="", help="steps to skip, comma-separated")
    p.add_argument("--caps", default="", help="cap overrides, STEP=SECONDS[,STEP=SECONDS]")
    p.add_argument("--work", help="scratch folder (default: OUT/work)")
    p.add_argument("--step", help=argparse.SUPPRESS)  # a child: run this one step
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.step:
        return _child(args)
    try:
        caps = {k: int(v) for k, v in (c.split("=", 1) for c in args.caps.split(",") if c)}
    except ValueError:
        return _refuse(f"--caps {args.caps!r}: STEP=SECONDS[,STEP=SECONDS] with whole seconds")
    unknown = (set(caps) | {s for s in args.skip.split(",") if s}) - set(STEPS)
    if unknown:
        return _refuse(f"no step named {', '.join(sorted(unknown))} ({', '.join(STEPS)})")
    out = Path(args.out)
    work = Path(args.work or out / "work")
    try:
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _refuse(f"--out {args.out}: {exc.strerror or exc}")
    if args.shards:
        args.shards = str(Path(args.shards).resolve())  # steps that run a bench do so from the work folder
    t0 = time.monotonic()
    lines: list[str] = []
    summary: dict[str, Any] = {}

    def note(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    shards = args.shards
    for name, (cap, needs) in STEPS.items():
        left = args.budget - (time.monotonic() - t0)
        cap = min(caps.get(name, cap), int(left))
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if name in args.skip.split(","):
            note(f"SKIP {name}: asked")
            continue
        if missing:
            note(f"SKIP {name}: needs {', '.join(missing)} (not installed here)")
            continue
        if name not in ("env", "gabor") and shards is None:
            shards = _shards(args, work, note)
            if shards is None:
                continue
        if left < 10 or cap < 1:
            note(f"SKIP {name}: {max(0, int(left))} s of the budget left, cap {cap} s")
            continue
        rc, seconds, timed_out = _run_step(name, args, shards, out, work, cap)
        result = _read_json(out / f"{name}.json")
        summary[name] = {"rc": rc, "seconds": round(seconds, 1), "timed_out": timed_out, **result}
        state = "TIMED OUT" if timed_out else ("ok" if rc == 0 else f"failed (exit {rc})")
        note(f"{name}: {state} in {seconds:.0f} s (cap {cap} s): {_brief(result)}")
    note(f"total {time.monotonic() - t0:.0f} s of {args.budget} s")
    _write(args, argv, out, summary, lines)
    return 0


def _refuse(line: str) -> int:
    print(f"avfusion bench gpu: {line}", file=sys.stderr)
    return 2


def _shards(args: argparse.Namespace, work: Path, note: Callable[[str], None]) -> str | None:
    """The bundled clips as 224² shards (once per work folder), or None with a line."""
    built = work / "shards224"
    if (built / "manifest.json").exists():
        args.shards = str(built)
        return args.shards
    if importlib.util.find_spec("av") is None:
        note("SKIP steps that read shards: no --shards and no PyAV to build them")
        args.skip = ",".join([*args.skip.split(","), *(s for s in STEPS if s not in ("env", "gabor"))])
        return None
    from jobs.bench.loader import make_shards

    shutil.move(make_shards(work / "build", args.clips, 224), built)
    shutil.rmtree(work / "build", ignore_errors=True)
    args.shards = str(built)
    return args.shards


def _run_step(
    name: str, args: argparse.Namespace, shards: str | None, out: Path, work: Path, cap: int
) -> tuple[int, float, bool]:
    """One step in its own process group, killed at ``cap`` seconds (after SIGUSR1 made
    it write every thread's stack to its log)."""
    cmd = [sys.executable, "-m", "jobs.bench.gpu", "--step", name, "--out", str(out), "--work", str(work)]
    cmd += ["--device", args.device, "--steps", str(args.steps)]
    cmd += ["--shards", shards] if shards else []
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    repo = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    start = time.monotonic()
    with open(out / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=cap)
            return rc, time.monotonic() - start, False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)  # faulthandler: where it was stuck
            time.sleep(2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9, time.monotonic() - start, True
        except BaseException:  # Ctrl-C, a SIGTERM made an exception: the step must not outlive us
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _brief(result: dict[str, Any]) -> str:
    keys = [k for k in result if k in HEADLINE] or list(result)[:3]
    return "; ".join(f"{k} {_fmt(result[k])}" for k in keys) or "no figures"


HEADLINE = {
    "device",
    "race_raw",
    "race_avfusion",
    "from_shards_clips_per_s",
    "model_only_clips_per_s",
    "ratio",
    "losses_finite",
    "frames_changed_under_queued_steps",
    "host_syncs_per_step",
    "logE_maxabs_tf32_allowed",
    "logE_maxabs_ours",
    "ddp_losses",
    "passed",
    "error",
    "skipped",
}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _write(
    args: argparse.Namespace, argv: list[str] | None, out: Path, summary: dict, lines: list[str]
) -> None:
    from jobs.bench import common

    common.print_table("Steps", [(ln,) for ln in lines], ("line",))
    rows = [(name, k, _fmt(v)) for name, r in summary.items() for k, v in r.items() if k in HEADLINE]
    if rows:
        common.print_table("Headline figures", rows, ("step", "figure", "value"))
    train = summary.get("train", {})
    plot = None
    if "model_only_clips_per_s" in train and importlib.util.find_spec("matplotlib"):

        def plot(local: str) -> None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            names = ["model only", "from shards"]
            values = [train["model_only_clips_per_s"], train.get("from_shards_clips_per_s", 0.0)]
            fig, ax = plt.subplots(figsize=(5, 3))
            ax.bar(names, values, color=["#888", "#2a7"])
            ax.set_ylabel("clips / s")
            ax.set_title(f"vggsound recipe, 224², {train.get('device', args.device)}")
            fig.tight_layout()
            fig.savefig(local, dpi=100)
            plt.close(fig)

    common.write_results("gpu", argv, data=summary, plot=plot, results_dir=str(out))


# ----------------------------------------------------------------------------- a step, in its own process


class Record:
    """A step's figures: printed as they come and the JSON rewritten each time, so a
    step killed at its cap keeps what it measured."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {}

    def __call__(self, key: str, value: Any, unit: str = "") -> None:
        self.data[key] = value
        print(f"{key:<40} {_fmt(value)} {unit}".rstrip(), flush=True)
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def _child(args: argparse.Namespace) -> int:
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    say = Record(Path(args.out) / f"{args.step}.json")
    try:
        import torch

        dev = torch.device(args.device if args.device != "cuda" else "cuda:0")
        if dev.type == "cuda" and not torch.cuda.is_available():
            from avfusion.device import cuda_problem

            say("skipped", f"CUDA is unusable: {cuda_problem()}")
            return 0
        say("device", str(dev) + (f" {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""))
        CHILD_STEPS[args.step](args, dev, say)
        return 0
    except Exception as exc:  # noqa: BLE001 — the figures so far stay in the JSON; the step says why it stopped
        traceback.print_exc()
        say("error", f"{type(exc).__name__}: {exc}"[:1000])
        return 1


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _env(args: argparse.Namespace, dev: Any, say: Record) -> None:
    import torch

    from avfusion import jpeg
    from avfusion.device import cuda_problem

    say("python", sys.version.split()[0])
    say("torch", torch.__version__)
    say("cuda_build", torch.version.cuda)
    say("cuda_problem", cuda_problem())
    say("cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if shutil.which("nvidia-smi"):
        q = "name,driver_version,memory.total,compute_cap"
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        say("nvidia_smi", smi.stdout.strip() or smi.stderr.strip())
    name, fn = jpeg.backend()
    say("jpeg_backend", name)
    data = _jpegs(2, 64)
    try:
        out = fn(data, dev)
        say("jpeg_on_device", f"{out[0].device} {tuple(out[0].shape)}")
    except Exception as exc:  # noqa: BLE001 — reported: the loader then decodes on the CPU
        say("jpeg_on_device", f"fails: {type(exc).__name__}: {str(exc)[:200]}")
    packages = "av ray webdataset soundfile tensorboardX torchcodec torchvision pyarrow matplotlib pytest"
    say("packages", {m: _version(m) for m in packages.split()})


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "MISSING"
    try:
        return str(getattr(importlib.import_module(module), "__version__", "present"))
    except Exception as exc:  # noqa: BLE001 — present but broken (a build for another torch): say how
        return f"broken: {type(exc).__name__}: {str(exc)[:80]}"


def _jpegs(n: int, size: int) -> list:
    """n distinct JPEGs of size² (textured, so a corrupted read changes its sums)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    return out


def _shard_jpegs(shards: str, clips: int) -> list:
    """The JPEG frames of ``clips`` training clips (real pictures: decoders differ in
    chroma upsampling, which noise exaggerates)."""
    from avfusion.loader import Dataset, TrainStream

    data = Dataset.open(shards)
    batch = next(iter(TrainStream(data.urls, clips, split=None, batches_per_epoch=1, seed=0)))
    o = batch.jpeg_offsets.tolist()
    return [batch.jpeg[o[i] : o[i + 1]] for i in range(len(o) - 1)]


def race_trials(decode: Callable[[], Any], dev: Any, nbytes: int, iters: int, victims: int = 8) -> int:
    """Iterations in which ``decode()`` overwrote memory that kernels queued on the
    caller's stream were still to read (pytorch/vision#9606's harness): fill victims,
    queue a long kernel and one reduction per victim, free the victims, decode, check."""
    import torch

    bad = 0
    for _ in range(iters):
        vs = [torch.full((nbytes,), k + 1, dtype=torch.uint8, device=dev) for k in range(victims)]
        torch.cuda.synchronize(dev)
        torch.cuda._sleep(100_000_000)  # ~50 ms of queued work on the caller's stream
        sums = [v.sum(dtype=torch.int64) for v in vs]
        del vs
        out = decode()
        torch.cuda.synchronize(dev)
        bad += any(int(s) != nbytes * (k + 1) for k, s in enumerate(sums))
        del out
    return bad


def _decode(args: argparse.Namespace, dev: Any, say: Record) -> None:
    import torch

    from avfusion import jpeg
    from jobs.bench.common import DeviceTimer

    data = _shard_jpegs(args.shards, 8) if args.shards else _jpegs(64, 224)
    say("images", f"{len(data)} {'from the shards' if args.shards else 'of noise'}")
    cpu = torch.device("cpu")
    timer = DeviceTimer(cpu)
    with timer:
        ref = jpeg.decode(data, cpu)
    say("cpu_images_per_s", len(data) / timer.device_seconds)
    if dev.type != "cuda":
        say("race", "skipped: needs CUDA")
        return
    ours = jpeg.decode(data, dev)
    say("device_vs_cpu_mean_abs", float((ours.cpu().int() - ref.int()).abs().float().mean()))
    for _ in range(2):
        jpeg.decode(data, dev)
    timer = DeviceTimer(dev)
    with timer:
        for _ in range(5):
            jpeg.decode(data, dev)
    say("device_images_per_s", 5 * len(data) / timer.device_seconds, "(CUDA events)")
    say("device_decode_host_cpu_s_per_batch", timer.cpu_seconds / 5)
    raw: dict[str, Callable[[], Any]] = {}
    with contextlib.suppress(ImportError, OSError, RuntimeError):
        from torchvision.io import decode_jpeg as vision_decode

        raw["torchvision"] = lambda: vision_decode(data, mode="RGB", device=dev)
    with contextlib.suppress(ImportError, OSError, RuntimeError):
        from torchcodec.decoders import decode_jpeg as codec_decode

        raw["torchcodec"] = lambda: codec_decode(data, mode="RGB", device=dev)
    n = 30
    results = {}
    for name, fn in raw.items():
        try:
            results[name] = f"{race_trials(fn, dev, ref[0].numel(), n)}/{n}"
        except Exception as exc:  # noqa: BLE001 — e.g. no nvJPEG in this build: said, the others still run
            results[name] = f"fails: {type(exc).__name__}: {str(exc)[:120]}"
    say("race_raw", results, "iterations with corrupted reads, decoder called bare")
    say("race_avfusion", f"{race_trials(lambda: jpeg.decode(data, dev), dev, ref[0].numel(), n)}/{n}")


def _train_run(args: argparse.Namespace, dev: Any, steps: int) -> Any:
    """The vggsound recipe's run on the shards, set up as ``bench train`` sets it up
    (the training job's build/stream/wrap; random ResNet weights: speed only)."""
    from jobs.bench.train import recipe_config, training_run

    if dev.type == "cuda":
        import torch

        torch.cuda.set_device(dev)
    cfg = recipe_config(
        "vggsound",
        args.shards,
        str(Path(args.work) / "train"),
        batch_size=args.batch_size or 128,
        steps=steps,
    )
    return training_run(cfg, dev)


def _train(args: argparse.Namespace, dev: Any, say: Record) -> None:
    import math

    import torch

    from avfusion.loader import decode_frames
    from avfusion.train import prepare, train_step
    from jobs.bench.train import from_shards, model_only

    warmup, n = 3, args.steps
    r = _train_run(args, dev, warmup + n + 8)
    say("recipe", f"vggsound: batch {r.cfg.batch_size}, bf16 {r.cfg.bf16}, loader workers {r.cfg.workers}")
    alone = model_only(r, warmup, n)
    say("model_only_clips_per_s", alone.per_second, "(one prepared batch, stepped again and again)")
    fed = from_shards(r, warmup, n)
    say("from_shards_clips_per_s", fed.per_second, "(loader workers, decode + augment on the device, step)")
    say("ratio", fed.per_second / alone.per_second, "from shards / model only")
    say("timing", {"model_only": alone.timer.as_dict(), "from_shards": fed.timer.as_dict()})
    batches = iter(r.batches)
    b, target = prepare(next(batches), r, 0)
    losses = [float(train_step(r, b, target)[0]) for _ in range(3)]
    say("losses", [round(v, 4) for v in losses])
    say("losses_finite", all(math.isfinite(v) for v in losses))
    if dev.type == "cuda":
        say("peak_gpu_mem_gib", torch.cuda.max_memory_allocated(dev) / 2**30)
        compact = [next(batches) for _ in range(3)]
        refs = [
            int(decode_frames(c.jpeg, c.jpeg_offsets, len(c.keys), dev).sum(dtype=torch.int64))
            for c in compact
        ]
        sums = []
        for i in range(2 * n):
            c = compact[i % 3]
            sums.append(
                (i % 3, decode_frames(c.jpeg, c.jpeg_offsets, len(c.keys), dev).sum(dtype=torch.int64))
            )
            train_step(r, b, target)  # the caller's stream busy, its allocator churning
        _sync(dev)
        say("frames_changed_under_queued_steps", f"{sum(int(s) != refs[k] for k, s in sums)}/{len(sums)}")


def _syncs(args: argparse.Namespace, dev: Any, say: Record) -> None:
    import collections
    import warnings

    import torch

    from avfusion.train import prepare, train_step

    if dev.type != "cuda":
        say("skipped", "needs CUDA (on the CPU, tests/test_gpu_paths.py runs the step on the meta device)")
        return
    r = _train_run(args, dev, 8)
    batches = iter(r.batches)
    b, t = prepare(next(batches), r, 0)
    train_step(r, b, t)
    compact = [next(batches) for _ in range(3)]
    _sync(dev)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for c in compact:
            b, t = prepare(c, r, 0)
            train_step(r, b, t)
        _sync(dev)
    torch.cuda.set_sync_debug_mode(0)
    sites = collections.Counter(
        f"{os.path.relpath(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
    )
    say("host_syncs_per_step", sum(sites.values()) / len(compact))
    say("sync_sites", dict(sites))


def _gabor(args: argparse.Namespace, dev: Any, say: Record) -> None:
    import torch

    from avfusion.model import AudioEncoder, _no_tf32

    torch.manual_seed(0)
    enc = AudioEncoder(16, "gabor", 64, 16_000).eval()
    wave = torch.rand(8, 160_000) * 2 - 1
    with torch.no_grad():
        ref = torch.log(enc.frontend.double()(wave.double()) + 1e-8)
        enc = enc.float().to(dev)
        raw = torch.log(enc.frontend(wave.to(dev)) + 1e-8).double().cpu()  # torch's defaults (TF32 on CUDA)
        ours = enc.features(wave.to(dev)).double().cpu()  # avfusion's path: normalised after the log
        with _no_tf32(dev.type):
            ours_log = torch.log(enc.frontend(wave.to(dev)) + 1e-8).double().cpu()
    say("logE_maxabs_tf32_allowed", float((raw - ref).abs().max()), "nats vs fp64 on the CPU")
    say("logE_maxabs_ours", float((ours_log - ref).abs().max()), "nats (autocast and TF32 off)")
    say("features_finite", bool(torch.isfinite(ours).all()))


def _ddp(args: argparse.Namespace, dev: Any, say: Record) -> None:
    import torch
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from avfusion.distributed import setup, teardown
    from avfusion.train import prepare, train_step

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # env:// rendezvous of one rank
    start = time.perf_counter()
    tdist.init_process_group(
        "nccl" if dev.type == "cuda" else "gloo",
        rank=0,
        world_size=1,
        **({"device_id": dev} if dev.type == "cuda" else {}),
    )
    try:
        dist = setup(dev, rank=0, world=1)
        say("backend", tdist.get_backend())
        if dev.type == "cuda":
            say("nccl", ".".join(map(str, torch.cuda.nccl.version())))
        r = _train_run(args, dist.device, 4)
        r.net = DDP(r.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        b, t = prepare(next(iter(r.batches)), r, 0)
        say("ddp_losses", [round(float(train_step(r, b, t)[0]), 4) for _ in range(3)])
        x = torch.ones(4, device=dev)
        tdist.all_reduce(x)
        tdist.barrier()
        say("all_reduce_ok", bool(x.sum().item() == 4))
    finally:
        teardown()
    say("seconds", time.perf_counter() - start)


def _subprocess_step(cmd: list[str], args: argparse.Namespace, say: Record, cwd: str) -> None:
    repo = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    print(proc.stdout[-20_000:], proc.stderr[-20_000:], sep="\n", flush=True)
    say("exit", proc.returncode)
    tail = [ln for ln in proc.stdout.splitlines() if ln.strip()][-8:]
    say("tail", tail)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[2:5])} exited {proc.returncode}: {(proc.stderr.strip() or '')[-300:]}"
        )


def _loader(args: argparse.Namespace, dev: Any, say: Record) -> None:
    cmd = [sys.executable, "-m", "jobs.bench", "loader", "--sizes", "224", "--shards", f"224={args.shards}"]
    cmd += ["--batches", "2,6", "--repeat", "1", "--device", "cuda" if dev.type == "cuda" else "cpu"]
    _subprocess_step(cmd, args, say, cwd=args.work)  # its results files land in WORK/docs/results


def _label(args: argparse.Namespace, dev: Any, say: Record) -> None:
    cmd = [sys.executable, "-m", "jobs.bench", "label", "--small", "16", "--large", "64"]
    cmd += ["--device", "cuda" if dev.type == "cuda" else "cpu"]
    _subprocess_step(cmd, args, say, cwd=args.work)


def _tests(args: argparse.Namespace, dev: Any, say: Record) -> None:
    repo = str(Path(__file__).resolve().parents[2])
    files = [f for f in TEST_FILES if (Path(repo) / f).exists()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *files]
    env = {**os.environ, "AVF_TEST_TIER": "fast"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    print(proc.stdout[-30_000:], proc.stderr[-10_000:], sep="\n", flush=True)
    last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or ["no output"]
    say("passed", proc.returncode == 0)
    say("result", last[0])


CHILD_STEPS: dict[str, Callable[[argparse.Namespace, Any, Record], None]] = {
    "env": _env,
    "decode": _decode,
    "train": _train,
    "syncs": _syncs,
    "gabor": _gabor,
    "ddp": _ddp,
    "loader": _loader,
    "label": _label,
    "tests": _tests,
}


if __name__ == "__main__":
    sys.exit(main())
