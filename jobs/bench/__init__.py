"""Benchmarks: each prints our cost as a ratio against a floor measured in the same run.

They are not timed tests; tests check behaviour. Run them with ``avfusion bench NAME``.
"""
