"""``python -m vgmed_eval.cli``: the same as ``vgmed-eval`` (and ``python -m vgmed_eval``)."""

import sys

from vgmed_eval.cli import main

sys.exit(main())
