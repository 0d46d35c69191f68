"""`python -m fastproxy` is the same as the `fastproxy` command."""

import sys

from fastproxy.cli import main

sys.exit(main())
