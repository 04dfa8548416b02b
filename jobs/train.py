"""`avfusion train`: Train the modality-attention fusion model (or a unimodal baseline) from shards: single process, torchrun DDP, or Ray Train."""

from __future__ import annotations

import sys

from jobs._pending import pending_main

DESCRIPTION = __doc__.split(": ", 1)[1]


def main(argv: list[str] | None = None) -> int:
    return pending_main("train", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
