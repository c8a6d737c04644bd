"""``python -m weightslab.cli``: the ``weightslab`` command."""

import sys

from weightslab.cli import main

sys.exit(main())
