"""`python -m daemon ...` is `mot-daemon ...`."""

import sys

from .cli import main

sys.exit(main())
