"""``python -m vgmed_eval``: the entry point launchers need (``torchrun ... -m vgmed_eval grounding ...``)."""

import sys

from vgmed_eval.cli import main

sys.exit(main())
