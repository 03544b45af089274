"""`python -m linx` is the `linx` command."""

import sys

from .cli import main

sys.exit(main())
