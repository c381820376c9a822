"""``python -m locproxy.cli``."""

import sys

from locproxy.cli import main

sys.exit(main())
