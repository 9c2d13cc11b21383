"""``python -m vgmed_build.cli``: the same as ``vgmed-build``."""

import sys

from vgmed_build.cli import main

sys.exit(main())
