"""``python -m tcmu_pr``: the same as the ``tcmu-pr`` console script."""

import sys

from tcmu_pr.cli import main

sys.exit(main())
