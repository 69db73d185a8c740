"""``python -m birefnet_core.train``: see :mod:`birefnet_core.train.cli`."""

import sys

from .cli import main

sys.exit(main())
