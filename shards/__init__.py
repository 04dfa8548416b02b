"""The shard format: WebDataset tars, per-shard ``_stats.json``, dataset manifest.

Writing, reading and the manifest live here so that preprocess (writer) and the
training/evaluation loaders (readers) agree on one documented format (README.md).
"""
