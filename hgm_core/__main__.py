"""`python -m hgm_core ...` is the `hgm` command (for environments without the console script)."""

import sys

from hgm_core.cli import main

sys.exit(main())
