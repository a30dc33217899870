import sys

from finsurg.cli import main

sys.exit(main())
