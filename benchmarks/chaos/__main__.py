"""`python -m benchmarks.chaos [--only NAME ...] [--short]`: see runner.py."""

import sys

from benchmarks.chaos.runner import main

sys.exit(main())
