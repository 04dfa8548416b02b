"""Thin entry points, one module per job, each with ``main(argv) -> int``.

Jobs wire library stages together and own the distributed set-up (Ray); the
``avfusion`` library underneath stays importable without a cluster.
"""
