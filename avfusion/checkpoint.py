"""The checkpoint format: the one module that writes and reads checkpoints (``last.pt``).

A checkpoint is a dict written with ``torch.save`` and read with ``weights_only=True``
(loading one never runs code). Its keys:

- ``format`` (:data:`FORMAT`) and ``version`` (:data:`VERSION`): what the file is. A file
  without them, or of another version, is refused with a :class:`CheckpointError`, never
  guessed at.
- ``model`` (the state dict), ``model_config`` (``ModelConfig`` as a dict, complete),
  ``label_map`` (class name → index), ``clip`` (``ClipSpec`` as a dict): all that
  evaluate, label and predict need (:data:`MODEL_KEYS`).
- the training state, to resume: ``optimizer``, ``scheduler``, ``epoch``, ``step``, ``rng``,
  ``cuda_rng``, ``train_config``, ``avfusion_version`` (the package that wrote it).
- ``video_init``: where the video encoder's starting weights came from
  (``avfusion.pretrained.VideoInit`` as a dict: requested, loaded — ``imagenet``, ``file``,
  ``random`` or ``random (imagenet unavailable)`` —, source, sha256 of the file, reason),
  None for an audio-only model. Absent from files written before it; nothing that loads
  a checkpoint needs it.

Raise :data:`VERSION` whenever these keys or what they mean change.
"""

from __future__ import annotations

import os
from typing import Any

from avfusion import __version__, storage
from avfusion.model import FusionModel, ModelConfig

FORMAT = "avfusion-checkpoint"
VERSION = 1
MODEL_KEYS = ("model", "model_config", "label_map", "clip")


class CheckpointError(ValueError):
    """A file is not a checkpoint this avfusion reads; the message is one line that says what to do."""


def save(state: dict[str, Any], url: str | os.PathLike[str]) -> None:
    """Write ``state`` stamped with the format and version; it appears whole or not at
    all, locally or on an object store."""
    missing = [k for k in MODEL_KEYS if k not in state]
    if missing:
        raise ValueError(f"a checkpoint needs {list(MODEL_KEYS)}; missing {missing}")
    storage.save_torch({**state, "format": FORMAT, "version": VERSION}, os.fspath(url))


def load(url: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict at ``url``, on the CPU; :class:`CheckpointError` when the file
    is not a checkpoint of this format version."""
    url = os.fspath(url)
    ckpt = storage.load_torch(url)
    retrain = f"retrain with avfusion {__version__}"
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{url} is not an avfusion checkpoint: it lacks the format marker of "
            f"checkpoint version {VERSION} (an earlier avfusion or another program wrote "
            f"it); {retrain}"
        )
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{url} is an avfusion checkpoint of version {ckpt.get('version')!r}, and "
            f"avfusion {__version__} reads version {VERSION}; {retrain}"
        )
    return ckpt


def model_from_checkpoint(url: str | os.PathLike[str]) -> tuple[FusionModel, dict[str, Any]]:
    """The model (in eval mode) and its checkpoint dict, for evaluate, label and predict.
    Self-contained: the checkpoint holds every weight, so the model is rebuilt without
    the file training started its video encoder from (``video_weights`` none)."""
    ckpt = load(url)
    model = FusionModel(ModelConfig(**{**ckpt["model_config"], "video_weights": "none"}))
    model.load_state_dict(ckpt["model"])  # strict: every key the model has, and no other
    return model.eval(), ckpt
