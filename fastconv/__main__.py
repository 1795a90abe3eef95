"""``python -m fastconv {bench,info,demo}``, also installed as ``fastconv``: the command line
of :mod:`fastconv.cli` (its parser, subcommands and exit statuses)."""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
