"""The label job's Parquet schema and the row/table building around it.

A row is one clip window of one file. Between the stages rows travel as batches of
numpy columns (what Ray Data carries); :func:`to_table` turns the predicted batches
into the documented schema. A file that cannot be labelled is exactly one row, with
``error_class`` and ``error_message`` set and the prediction columns null.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from avfusion.sources import display_path

# Row flags (the ``flags`` column): why a prediction is not the plain two-modality one.
# ``truncated``: with --windows all, the file stopped decoding before its stated end; the
# windows after this row have no row.
FLAGS = ("partial", "audio_only", "video_only", "video_undecodable", "truncated")

SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # the path as UTF-8 text (``\\xNN`` for a byte that is not)
        ("path_bytes", pa.binary()),  # the path exactly (``os.fsencode``): what identifies a file
        ("key", pa.string()),
        ("file_size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("duration", pa.float64()),
        ("container", pa.string()),
        ("video_codec", pa.string()),
        ("audio_codec", pa.string()),
        ("window_index", pa.int32()),
        ("window_count", pa.int32()),
        ("window_start", pa.float64()),
        ("window_end", pa.float64()),
        ("predicted_label", pa.string()),
        ("class_index", pa.int32()),
        ("confidence", pa.float32()),
        ("topk_labels", pa.list_(pa.string())),
        ("topk_probs", pa.list_(pa.float32())),
        ("w_audio", pa.float32()),
        ("w_video", pa.float32()),
        ("attention_agrees", pa.bool_()),
        ("audio_only_label", pa.string()),
        ("audio_only_confidence", pa.float32()),
        ("video_only_label", pa.string()),
        ("video_only_confidence", pa.float32()),
        ("silent_audio", pa.bool_()),
        ("no_audio_track", pa.bool_()),
        ("no_video_track", pa.bool_()),
        ("frozen_video", pa.bool_()),
        ("flags", pa.list_(pa.string())),
        ("covered_seconds", pa.float64()),
        ("model_id", pa.string()),
        ("checkpoint", pa.string()),
        ("error_class", pa.string()),
        ("error_message", pa.string()),
        ("elapsed_ms", pa.float64()),
    ]
)


PREDICTION_COLUMNS = (
    "predicted_label",
    "class_index",
    "confidence",
    "topk_labels",
    "topk_probs",
    "w_audio",
    "w_video",
    "attention_agrees",
    "audio_only_label",
    "audio_only_confidence",
    "video_only_label",
    "video_only_confidence",
)


def rows_to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Decoded rows → one batch of numpy columns (tensors stacked), as Ray Data carries it."""
    return {
        k: np.stack([r[k] for r in rows]) if k in ("waveform", "frames") else np.array([r[k] for r in rows])
        for k in rows[0]
    }


def to_table(batch: dict[str, np.ndarray]) -> pa.Table:
    """Predictor output → a table in the documented schema (empty strings → null)."""
    columns = {}
    for field in SCHEMA:
        values = list(batch[field.name])
        if field.name in ("error_class", "error_message", "container", "video_codec", "audio_codec"):
            values = [v if v else None for v in values]
        if field.name == "flags":  # carried as "a,b" through Ray (ragged lists do not batch)
            values = [
                [f for f in str(v).split(",") if f] if isinstance(v, str) else list(v or []) for v in values
            ]
        elif pa.types.is_list(field.type):
            values = [None if v is None else list(v) for v in values]
        if pa.types.is_string(field.type):  # an error message may quote a name that is not UTF-8
            values = [display_path(v) if isinstance(v, str) else v for v in values]
        elif pa.types.is_binary(field.type):
            values = [bytes(v) for v in values]
        columns[field.name] = pa.array([_py(v) for v in values], type=field.type)
    return pa.table(columns, schema=SCHEMA)


def _py(v: Any) -> Any:
    """numpy scalars to Python; NaN to null (Ray returns None in numeric columns as NaN)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    if isinstance(v, list):
        return [_py(x) for x in v]
    return v
