"""The commands (``birq-*`` entry points and ``python -m birq_fs2.cli.*``): the top floor.
Nothing in the library, the models or the recipes imports them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_command(prog: str, args: argparse.Namespace, action: Callable[[], int]) -> int:
    """`action`'s exit status; an error it raises becomes one line ``<prog>: error: ...``
    on stderr and exit status 2 (with ``--debug``: the traceback instead)."""
    try:
        return action()
    except Exception as ex:  # noqa: BLE001 - one line for users; --debug for the traceback
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {ex}", file=sys.stderr)
        return 2
