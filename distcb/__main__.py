"""`python -m distcb`: the `distcb` command line."""

import sys

from distcb.launch.cli import main

sys.exit(main())
