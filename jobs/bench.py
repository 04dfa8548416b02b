"""`avfusion bench`: Benchmarks (preprocess, train, robustness, label), each printing a ratio against a floor measured in the same run."""

from __future__ import annotations

import sys

from jobs._pending import pending_main

DESCRIPTION = __doc__.split(": ", 1)[1]


def main(argv: list[str] | None = None) -> int:
    return pending_main("bench", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
