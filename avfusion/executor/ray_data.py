"""The label job's Ray Data pipeline: file rows → decode tasks → model actors.

One function, so the job and ``avfusion bench label`` run the same stages: decode
(:class:`avfusion.labelling.worker.DecodeRows`) in CPU tasks that Ray Data spreads over the
nodes, then :class:`avfusion.labelling.worker.Predictor` in an actor pool that loads the
checkpoint once per actor. The actor's device follows the resources it was given
(``gpus_per_actor`` 0: the CPU, even where CUDA is visible; Ray no longer hides GPUs
from actors that asked for none). Called inside a Ray session (the caller's).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import ray

from avfusion.config import ClipSpec
from avfusion.labelling.worker import DecodeRows, Predictor


def label_dataset(items: list[dict], clip: ClipSpec, cfg, decode_only: bool = False) -> "ray.data.Dataset":
    """The lazy dataset of labelled rows (``decode_only``: decoded rows, no model).
    ``cfg``: a :class:`avfusion.labelling.LabelConfig` (every_window, decode_batch,
    checkpoint, top_k, bf16, actors, gpus_per_actor, actor_memory_mb, model_batch)."""
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // cfg.decode_batch))
    ds = ds.map_batches(DecodeRows(clip, cfg.every_window), batch_size=cfg.decode_batch, num_cpus=1)
    if decode_only:
        return ds
    return ds.map_batches(Predictor, fn_constructor_kwargs={"checkpoint": str(cfg.checkpoint), "top_k": cfg.top_k,
                                                            "gpus_assigned": math.ceil(cfg.gpus_per_actor),
                                                            "bf16": cfg.bf16},
                          batch_size=cfg.model_batch, compute=ray.data.ActorPoolStrategy(size=cfg.actors),
                          num_gpus=cfg.gpus_per_actor, num_cpus=0 if cfg.gpus_per_actor else 1,
                          # Reserving the model's memory also keeps decode a separate
                          # stage of CPU tasks (Ray fuses stages with equal resources).
                          memory=cfg.actor_memory_mb * 2**20)


def label_batches(items: list[dict], clip: ClipSpec, cfg) -> Iterator[dict[str, np.ndarray]]:
    """Labelled batches (numpy columns) as they complete, for the part writer."""
    yield from label_dataset(items, clip, cfg).iter_batches(batch_size=None, batch_format="numpy")
