import sys

from lagoon.cli import main

sys.exit(main())
