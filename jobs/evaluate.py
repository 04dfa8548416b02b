"""`avfusion evaluate`: Robustness evaluation: accuracy and attention per corruption and severity, with a Markdown table, JSON and plots."""

from __future__ import annotations

import sys

from jobs._pending import pending_main

DESCRIPTION = __doc__.split(": ", 1)[1]


def main(argv: list[str] | None = None) -> int:
    return pending_main("evaluate", DESCRIPTION, argv)


if __name__ == "__main__":
    sys.exit(main())
