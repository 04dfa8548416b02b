"""Parsers for jobs whose implementation has not landed yet.

They exist so ``avfusion <job> --help`` works from the first commit; running one
says plainly that it is not built yet and exits with status 2, never a fake result.
"""

from __future__ import annotations

import argparse
import sys


def pending_main(prog: str, description: str, argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=f"avfusion {prog}", description=description,
                                     epilog="Status: not implemented yet.")
    parser.parse_known_args(argv)
    print(f"avfusion {prog}: not implemented yet", file=sys.stderr)
    return 2
