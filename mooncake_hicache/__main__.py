"""``python -m mooncake_hicache ...`` is the ``mooncake-hicache`` command."""

import sys

from .cli import main

sys.exit(main())
