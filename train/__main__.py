"""`python -m train {train,eval,functional} ...` (also under `accelerate launch -m train train ...`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
