"""``python -m bench [--quick] [--only NAMES] [--no-peers] [--report RESULTS.json]``."""

from bench.cli import main

raise SystemExit(main())
