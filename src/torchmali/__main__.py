"""``python -m torchmali`` runs the command line."""

import sys

from torchmali.cli import main

sys.exit(main())
