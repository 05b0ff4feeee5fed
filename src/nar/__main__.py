"""``python -m nar``: the ``nar`` command (for launchers that start Python modules, e.g. ``torchrun -m``)."""

import sys

from nar.cli.main import main

sys.exit(main())
