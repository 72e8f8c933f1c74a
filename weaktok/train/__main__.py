"""``python -m weaktok.train`` and ``deepspeed --module weaktok.train``: see weaktok/train/cli.py."""

import sys

from weaktok.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
