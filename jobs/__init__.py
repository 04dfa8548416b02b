"""Thin entry points, one module per job, each with ``main(argv) -> int``.

Jobs wire library stages together and own the distributed set-up (Ray); the
``avfusion`` library underneath stays importable without a cluster.
"""


def executor_of(args):
    """The executor ``--executor`` names: ``local`` runs the work in this process,
    ``--concurrency`` at a time (default 1), and imports no Ray; ``ray`` starts an
    embedded Ray or joins ``--address``."""
    if args.executor == "local":
        from avfusion.executor import InProcessExecutor

        return InProcessExecutor(args.concurrency or 1)
    from avfusion.executor.ray_tasks import RayExecutor

    return RayExecutor(args.address, args.num_cpus, concurrency=args.concurrency, verbose=args.verbose)
