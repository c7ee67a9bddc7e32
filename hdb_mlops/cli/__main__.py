"""``python -m hdb_mlops.cli``: the same as the ``hdb-mlops`` command."""

import sys

from hdb_mlops.cli import main

sys.exit(main())
