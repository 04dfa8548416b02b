"""What runs on one batch in a worker: decode file rows, predict decoded rows.

Both are small picklable callables on batches of numpy columns, placed by the
executor (:meth:`avfusion.executor.Executor.map_batches`): ``DecodeRows`` in stateless
decode tasks, ``Predictor`` in a pool whose instances load the checkpoint once each.

Every file gets its best answer: a damaged file is labelled from what decodes
(``partial`` flag, ``covered_seconds``), and a file with one usable modality (audio
files, an undecodable video stream beside good audio, GIFs, raw video streams, clips
without audio) is predicted from that modality alone through the model's own
unimodal path (``FusionModel.forward_head`` with the other embedding absent), flagged
``audio_only`` / ``video_only`` — never from zero-filled stand-ins, which the model
never saw in training.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avfusion import storage
from avfusion.config import ClipSpec
from avfusion.decode import DecodeLimits, decode_clip
from avfusion.labelling.schema import PREDICTION_COLUMNS, rows_to_batch
from avfusion.model import FusionOutput, attention_agrees
from avfusion.probe import MediaError, probe
from avfusion.sources import display_path

# Labelling is lenient where training is strict: an audio-only file (or one whose video
# no decoder knows) is labelled from its audio alone, one frame is a video, an animated
# GIF is a short video.
LABEL_LIMITS = DecodeLimits(
    allow_missing_video=True,
    min_frames=1,
    min_side=8,
    allow_undecodable_video=True,
    allow_animated_images=True,
)


def model_id(checkpoint: str | Path) -> str:
    """A short content hash of the checkpoint file: which model labelled a row."""
    h = hashlib.sha256()
    with storage.open(str(checkpoint), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _windows(duration: float | None, clip_seconds: float, every: bool) -> list[float]:
    if not every or not duration or duration <= clip_seconds:
        return [0.0]
    return [float(s) for s in np.arange(0.0, duration - 1e-6, clip_seconds)]


@dataclass
class DecodeRows:
    """The decode stage: file rows → one row per clip window, with the decoded
    tensors (zeros and an error for files that fail)."""

    clip: ClipSpec
    every_window: bool = False
    limits: DecodeLimits = LABEL_LIMITS

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for i, raw in enumerate(batch["path_bytes"]):
            rows += self.decode_file(
                os.fsdecode(bytes(raw)),  # the exact name: ``path`` is its display form
                str(batch["key"][i]),
                int(batch["file_size"][i]),
                int(batch["mtime_ns"][i]),
            )
        return rows_to_batch(rows)

    def decode_file(self, path: str, key: str, size: int, mtime: int) -> list[dict]:
        """The rows of one file: ``path`` as the OS names it (any bytes, ``os.fsdecode``d);
        the rows carry it as ``path_bytes`` and its display form as ``path``."""
        if "://" in path and not path.startswith("file://"):
            # Remote (s3://, gs://, …): decoders need a seekable local file; this one file
            # is fetched into a temp dir for the duration of the decode.
            try:
                with storage.local_copy(path) as local:
                    rows = self.decode_file(local, key, size, mtime)  # never raises: failures are rows
            except Exception as exc:  # noqa: BLE001 - unreachable object store, missing object, …: a row
                return [
                    self._error_row(
                        path,
                        key,
                        size,
                        mtime,
                        "fetch_error",
                        f"{type(exc).__name__}: {exc}",
                        time.perf_counter(),
                    )
                ]
            return [{**r, "path": display_path(path), "path_bytes": os.fsencode(path)} for r in rows]
        t0 = time.perf_counter()
        base = {
            "path": display_path(path),
            "path_bytes": os.fsencode(path),
            "key": key,
            "file_size": size,
            "mtime_ns": mtime,
            "duration": np.nan,
            "container": "",
            "video_codec": "",
            "audio_codec": "",
            "error_class": "",
            "error_message": "",
        }
        try:
            # probe refuses a FIFO, socket, device, loop or overlong path before opening it,
            # and its reads, like the decode's, are bounded by the deadline.
            info = probe(path, timeout=self.limits.deadline_seconds)
            base.update(
                duration=info.duration or np.nan,
                container=info.container,
                video_codec=info.video_codec or "",
                audio_codec=info.audio_codec or "",
            )
            rows = []
            starts = _windows(info.duration, self.clip.clip_seconds, self.every_window)
            for wi, start in enumerate(starts):
                try:
                    clip = decode_clip(path, self.clip, start, self.limits)
                except MediaError as exc:
                    if not rows or exc.kind not in ("empty_window", "decode_error", "too_few_frames"):
                        raise
                    # A cut or damaged file ends before its stated duration: keep the
                    # windows that decoded, and say on the last that later ones are lost.
                    rows[-1]["flags"] = ",".join(filter(None, [rows[-1]["flags"], "truncated"]))
                    break
                q = clip.quality
                covered = min(self.clip.clip_seconds, max(q.audio_seconds, q.video_seconds))
                rows.append(
                    {
                        **base,
                        "window_index": wi,
                        "window_count": len(starts),
                        "window_start": start,
                        "window_end": start + covered,
                        "silent_audio": q.silent,
                        "no_audio_track": not q.has_audio,
                        "no_video_track": not q.has_video,
                        "frozen_video": bool(q.frozen),
                        # Decode-side flags; Predictor adds the modality it used.
                        "flags": ",".join(
                            f
                            for f, on in (("partial", q.partial), ("video_undecodable", q.video_undecodable))
                            if on
                        ),
                        "covered_seconds": q.covered_seconds,
                        "waveform": clip.waveform,
                        "frames": clip.frames,
                        "elapsed_ms": 0.0,
                    }
                )
            per = (time.perf_counter() - t0) * 1000 / len(rows)
            for r in rows:
                r["elapsed_ms"] = per
                r["window_count"] = len(rows)  # resume and part cuts count on the rows written
            return rows
        except MediaError as exc:
            kind, message = exc.kind, exc.message
        except Exception as exc:  # noqa: BLE001 - an input we did not foresee: one row, never a crash
            kind, message = "internal_error", f"{type(exc).__name__}: {exc}"
        return [self._error_row(path, key, size, mtime, kind, message, t0, base)]

    def _error_row(
        self,
        path: str,
        key: str,
        size: int,
        mtime: int,
        kind: str,
        message: str,
        t0: float,
        base: dict | None = None,
    ) -> dict:
        base = base or {
            "path": display_path(path),
            "path_bytes": os.fsencode(path),
            "key": key,
            "file_size": size,
            "mtime_ns": mtime,
            "duration": np.nan,
            "container": "",
            "video_codec": "",
            "audio_codec": "",
        }
        side = self.clip.frame_size
        return {
            **base,
            "window_index": 0,
            "window_count": 1,
            "window_start": 0.0,
            "window_end": 0.0,
            "silent_audio": False,
            "no_audio_track": False,
            "no_video_track": False,
            "frozen_video": False,
            "flags": "",
            "covered_seconds": 0.0,
            "waveform": np.zeros(self.clip.num_samples, np.float32),
            "frames": np.zeros((self.clip.num_frames, side, side, 3), np.uint8),
            "error_class": kind,
            "error_message": message[:2000],
            "elapsed_ms": (time.perf_counter() - t0) * 1000,
        }


class Predictor:
    """The model stage: loads the checkpoint once, predicts decoded rows, drops tensors.

    ``gpus_assigned``: the GPUs the scheduler gave this actor (0: the CPU, whatever
    CUDA shows; None outside a scheduler), see :func:`avfusion.device.choose_device`.
    ``bf16``: autocast the model to bfloat16 (meant for CUDA; softmax stays fp32)."""

    def __init__(
        self,
        checkpoint: str,
        top_k: int = 5,
        device: str = "auto",
        gpus_assigned: int | None = None,
        bf16: bool = False,
    ) -> None:
        from avfusion.checkpoint import model_from_checkpoint
        from avfusion.device import choose_device

        self.device = choose_device(device, gpus_assigned=gpus_assigned)
        self.bf16 = bf16
        self.model, ckpt = model_from_checkpoint(checkpoint)
        self.model.to(self.device)
        self.names = sorted(ckpt["label_map"], key=ckpt["label_map"].get)
        self.top_k = min(top_k, len(self.names))
        self.checkpoint, self.model_id = str(checkpoint), model_id(checkpoint)

    @torch.no_grad()
    def outputs(self, waveform: np.ndarray | None, frames: np.ndarray | None) -> FusionOutput:
        """The model on a batch that has ``waveform``, ``frames`` or both (None: absent).
        One modality goes through the model's unimodal head path (``forward_head``
        with the other embedding None: weights one-hot, logits from that embedding)."""

        def tensor(x: np.ndarray | None) -> torch.Tensor | None:
            return None if x is None else torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model.forward_head(*self.model.forward_features(tensor(waveform), tensor(frames)))

    @torch.no_grad()
    def packed(self, waveform: np.ndarray | None, frames: np.ndarray | None) -> np.ndarray:
        """Everything a row needs, computed on the model's device and brought to the host
        in ONE transfer: (B, 2k + 7) float32 columns [top-k probs, top-k indices,
        w_audio, w_video, audio head's best prob and index, video head's, agreement]
        (NaN where absent; indices are exact in float32 below 2**24 classes)."""
        res = self.outputs(waveform, frames)
        probs = torch.softmax(res.logits.float(), dim=1)
        top_p, top_i = probs.topk(self.top_k, dim=1)
        cols = [top_p, top_i.float(), res.weights.float()]
        nan = torch.full((len(probs), 2), float("nan"), device=probs.device)
        for logits in (res.audio_logits, res.video_logits):
            best = torch.softmax(logits.float(), dim=1).max(dim=1) if logits is not None else None
            cols.append(torch.stack([best.values, best.indices.float()], dim=1) if best is not None else nan)
        # No ground truth here: agreement asks whether the higher-weighted modality's own
        # head is the surer of the two about the fused prediction (null with one modality).
        cols.append(
            attention_agrees(res, top_i[:, 0]).float()[:, None] if res.scores is not None else nan[:, :1]
        )
        return torch.cat(cols, dim=1).cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        out = {k: v for k, v in batch.items() if k not in ("waveform", "frames")}
        errors = [str(e) if e else "" for e in batch["error_class"]]
        messages = [str(m) if m else "" for m in batch["error_message"]]
        flags = [[f for f in str(x).split(",") if f] if isinstance(x, str) else [] for x in batch["flags"]]
        cols = {name: [None] * n for name in PREDICTION_COLUMNS}
        # Which modalities each row can use: what decoded and what the model has.
        use_audio = np.array([not bool(x) for x in batch["no_audio_track"]]) & (self.model.audio is not None)
        use_video = np.array([not bool(x) for x in batch["no_video_track"]]) & (self.model.video is not None)
        ok = np.array([not e for e in errors])
        for row in np.flatnonzero(ok & ~use_audio & ~use_video):
            errors[row] = "no_usable_modality"
            messages[row] = (
                f"the file has {'no audio' if batch['no_audio_track'][row] else 'audio'} and "
                f"{'no video' if batch['no_video_track'][row] else 'video'}; the model uses "
                f"{self.model.cfg.modalities}"
            )
            ok[row] = False
        for ua, uv in ((True, True), (True, False), (False, True)):
            idx = np.flatnonzero(ok & (use_audio == ua) & (use_video == uv))
            if not len(idx):
                continue
            packed = self.packed(batch["waveform"][idx] if ua else None, batch["frames"][idx] if uv else None)
            for row, values in zip(idx, packed, strict=True):
                self._fill(cols, int(row), values)
                if not (ua and uv):
                    flags[row].append("audio_only" if ua else "video_only")
        for k, v in cols.items():
            arr = np.empty(n, dtype=object)
            arr[:] = v
            out[k] = arr
        out["error_class"] = np.array(errors)
        out["error_message"] = np.array(messages)
        out["flags"] = np.array([",".join(sorted(f)) for f in flags])
        out["model_id"] = np.array([self.model_id] * n)
        out["checkpoint"] = np.array([self.checkpoint] * n)
        return out

    def _fill(self, cols: dict[str, list], row: int, values: np.ndarray) -> None:
        """One row's prediction columns from its packed host values (see :meth:`packed`)."""
        k = self.top_k
        top_p, top_i = values[:k], values[k : 2 * k].astype(int)
        cols["predicted_label"][row] = self.names[top_i[0]]
        cols["class_index"][row] = int(top_i[0])
        cols["confidence"][row] = float(top_p[0])
        cols["topk_labels"][row] = [self.names[i] for i in top_i]
        cols["topk_probs"][row] = [float(p) for p in top_p]
        cols["w_audio"][row], cols["w_video"][row] = float(values[2 * k]), float(values[2 * k + 1])
        for j, name in enumerate(("audio", "video")):
            prob, index = values[2 * k + 2 + 2 * j : 2 * k + 4 + 2 * j]
            if not np.isnan(prob):
                cols[f"{name}_only_label"][row] = self.names[int(index)]
                cols[f"{name}_only_confidence"][row] = float(prob)
        agrees = values[2 * k + 6]
        cols["attention_agrees"][row] = None if np.isnan(agrees) else bool(agrees)
