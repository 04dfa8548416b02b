"""``python -m jobs.bench NAME``: the same dispatch as ``avfusion bench NAME``."""

import sys

from jobs.bench import main

sys.exit(main())
