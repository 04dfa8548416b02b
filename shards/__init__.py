"""The shard format: WebDataset tars, per-shard ``_stats.json``, dataset manifest.

Encoding samples and tars (``writer``), decoding a sample (``reader``) and the records,
names and manifest (``manifest``) live here so that preprocess and the training and
evaluation loaders agree on one documented format (README.md). The lowest layer: it
imports nothing of ``avfusion`` and opens no file; ``avfusion.shardstore``,
``avfusion.preprocess`` and ``avfusion.loader`` move the bytes.
"""
