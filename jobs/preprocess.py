"""`avfusion preprocess`: VGGSound CSV / URL list / folder of videos → Ray tasks → yt-dlp section download → PyAV decode → WebDataset shards with per-shard stats, resumable."""

from __future__ import annotations

import sys

from jobs._pending import pending_main

DESCRIPTION = __doc__.split(": ", 1)[1]


def main(argv: list[str] | None = None) -> int:
    return pending_main("preprocess", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
