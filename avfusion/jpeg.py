"""Batched JPEG decode on a device, safe on a GPU's streams.

Three problems a plain ``decode_jpeg(list, device="cuda")`` call has, and how each is met:

* **A memory race.** nvJPEG writes its output on its own stream, without waiting for
  the caller's stream, into blocks the caching allocator handed out from the caller's
  stream pool; a block freed by the previous step can still be read by kernels queued
  there, and the decode overwrites it (pytorch/vision#9606: 199 of 200 iterations
  corrupted on an H100; our own probe on an H200: 30 of 30). The decode therefore runs
  under a side stream of its own (:func:`on_side_stream`): its outputs come from that
  stream's pool, the caller's stream waits for the side stream before reading them,
  and ``record_stream`` keeps the side pool from reusing them while the caller reads.
* **No decoder on the device.** A torchvision or TorchCodec built without nvJPEG (or a
  device it cannot use) raises on the first CUDA decode. The first failing decode on a
  device is reported once and that device decodes on the CPU from then on (pinned,
  copied without blocking).
* **Deprecation.** torchvision 0.29 deprecates its image decoders in favour of
  TorchCodec (``torchcodec.decoders.decode_jpeg``, the same libjpeg-turbo and nvJPEG
  underneath, outputs bit-identical on the CPU); TorchCodec is used when it imports,
  torchvision otherwise (TorchCodec builds are tied to one torch release).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from avfusion.device import to_device

Decoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


@functools.cache
def backend() -> tuple[str, Decoder]:
    """(name, decode(list of 1-D uint8 CPU tensors, device) → list of (3, H, W) uint8)."""
    try:
        from torchcodec.decoders import decode_jpeg as codec_decode

        def by_codec(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
            return list(codec_decode(data, mode="RGB", device=device))

        return "torchcodec", by_codec
    except (ImportError, OSError, RuntimeError):  # not installed, or built for another torch
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as vision_decode

        def by_vision(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
            with warnings.catch_warnings():  # deprecated in 0.29; the fallback, named in doctor
                warnings.simplefilter("ignore", DeprecationWarning)
                return list(vision_decode(data, mode=ImageReadMode.RGB, device=device))

        return "torchvision", by_vision


_NO_DEVICE_DECODE: set[str] = set()  # devices whose decoder failed once: they decode on the CPU


def decode(data: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """JPEG byte tensors (CPU) → one (N, 3, H, W) uint8 tensor on ``device``, every
    image the same size. Decoded on the device where its decoder can (on CUDA under a
    side stream: see the module docstring), else on the CPU and copied over."""
    name, fn = backend()
    if device.type != "cpu" and str(device) not in _NO_DEVICE_DECODE:
        try:
            if device.type == "cuda":
                out = on_side_stream(lambda: torch.stack(fn(data, device)), device)
            else:
                out = torch.stack(fn(data, device))
            if out.device.type == device.type:
                return out
            why = f"it decoded to {out.device}"  # torchvision ignores a device it cannot use
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        # The same bytes on the CPU: bad data (a truncated frame, mixed sizes) fails there too
        # and is raised as it is; only a device that cannot decode is switched to the CPU.
        frames = torch.stack(fn(data, torch.device("cpu")))
        _NO_DEVICE_DECODE.add(str(device))
        warnings.warn(
            f"JPEG decode on {device} failed ({name}: {why}); frames are decoded on the CPU from now on "
            "(slower: more loader workers help)",
            stacklevel=2,
        )
        return to_device(frames, device)
    return to_device(torch.stack(fn(data, torch.device("cpu"))), device)


_SIDE_STREAMS: dict[tuple[int, str], Any] = {}


def on_side_stream(
    fn: Callable[[], torch.Tensor], device: torch.device, cuda: Any = torch.cuda
) -> torch.Tensor:
    """``fn()`` run under this device's side stream, its result made safe to use on the
    caller's current stream: the caller waits for the side stream (the writes land
    before any read), and the result is recorded as used by the caller's stream (the
    side stream's pool will not hand its memory out again until the caller's queued
    work is done). ``cuda`` is ``torch.cuda``; tests pass an object with the same
    ``current_stream``/``Stream``/``stream`` to check the ordering without a GPU."""
    caller = cuda.current_stream(device)
    key = (id(cuda), str(device))
    side = _SIDE_STREAMS.get(key)
    if side is None:
        side = _SIDE_STREAMS[key] = cuda.Stream(device=device)
    with cuda.stream(side):
        out = fn()
    caller.wait_stream(side)
    out.record_stream(caller)
    return out
