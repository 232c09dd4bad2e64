"""``python -m loa COMMAND …``, as the ``loa`` console script."""

import sys

from loa.cli import main

sys.exit(main())
