"""``python -m codesign.cli``: the same command as the installed ``codesign`` script."""

import sys

from codesign.cli import main

sys.exit(main())
