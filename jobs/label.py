"""`avfusion label`: Batch-label a folder (or list) of videos into a Parquet dataset with predictions, top-k and attention weights."""

from __future__ import annotations

import sys

from jobs._pending import pending_main

DESCRIPTION = __doc__.split(": ", 1)[1]


def main(argv: list[str] | None = None) -> int:
    return pending_main("label", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
