"""`python -m prewarm.cli ...`, the same as the `prewarm` console script."""

import sys

from prewarm import cli

sys.exit(cli.main())
