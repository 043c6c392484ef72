"""``python -m stalwart.contract [-o FILE] [--check]``."""

import sys

from stalwart.contract._cli import main

sys.exit(main())
