"""`python -m penctl`: the same as the `penctl` command."""

import sys

from penctl.cli import main

sys.exit(main())
