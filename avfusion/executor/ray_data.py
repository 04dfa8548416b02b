"""A :class:`~avfusion.executor.BatchPipeline` on Ray Data: decode tasks → model actors.

One function, so ``RayExecutor.map_batches`` (the label job) and ``avfusion bench
label`` run the same stages: ``decode`` in CPU tasks that Ray Data spreads over the
nodes, then ``model`` in an actor pool that builds its state (loads the checkpoint)
once per actor. The actor's device follows the resources it was given (``gpus`` 0: the
CPU, even where CUDA is visible: Ray does not hide GPUs from actors that asked for
none). Called inside a Ray session (the caller's).
"""

from __future__ import annotations

import math
from typing import Any

import ray

from avfusion.executor import BatchPipeline


def pipeline_dataset(pipeline: BatchPipeline, items: list[dict[str, Any]]) -> ray.data.Dataset:
    """The lazy dataset of the pipeline's output rows (``pipeline.model`` None: the
    decoded rows)."""
    ds: ray.data.Dataset = ray.data.from_items(
        items, override_num_blocks=max(1, len(items) // pipeline.decode_batch)
    )
    ds = ds.map_batches(pipeline.decode, batch_size=pipeline.decode_batch, num_cpus=1)
    if pipeline.model is None:
        return ds
    return ds.map_batches(
        pipeline.model,
        fn_constructor_kwargs={**pipeline.model_kwargs, "gpus_assigned": math.ceil(pipeline.gpus)},
        batch_size=pipeline.model_batch,
        compute=ray.data.ActorPoolStrategy(size=pipeline.instances),
        num_gpus=pipeline.gpus,
        num_cpus=0 if pipeline.gpus else 1,
        # Reserving the model's memory also keeps decode a separate
        # stage of CPU tasks (Ray fuses stages with equal resources).
        memory=pipeline.memory_mb * 2**20,
    )
