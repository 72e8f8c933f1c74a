import sys

from weaktok.cli import main

sys.exit(main())
