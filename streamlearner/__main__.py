"""``python -m streamlearner``: the command line."""

import sys

from streamlearner.cli import main

sys.exit(main())
