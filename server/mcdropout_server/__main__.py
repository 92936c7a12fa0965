"""``python -m mcdropout_server serve ...``: the serve command without the core CLI."""

import sys

from mcdropout_server.cli import main

sys.exit(main())
