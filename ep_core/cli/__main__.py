"""`python -m ep_core.cli ...` is `ep-core ...`."""

import sys

from . import main

sys.exit(main())
