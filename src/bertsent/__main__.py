"""Run the CLI as ``python -m bertsent``."""

import sys

from bertsent.cli import main

sys.exit(main())
