"""``python -m mcdropout.cli ...``: the ``mcdropout`` command without its console script."""

import sys

from mcdropout.cli import main

sys.exit(main())
