"""The ending every command-line entry point shares: a user error is one line on stderr, not a traceback.

    if __name__ == "__main__":
        run_cli(main)

A missing file, a bad value in a file or flag (``ValueError``, which the loaders raise naming the file and
field) and a non-finite loss (``NonFiniteLossError``, naming the epoch and step) print ``error: <message>``
and exit with status 2, as argparse does for bad flags; ``--debug`` on the command line shows the
traceback instead. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from tasks.engine import NonFiniteLossError

__all__ = ["USER_ERRORS", "run_cli"]

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
    NonFiniteLossError,
)


def run_cli(main: Callable[[], Any], errors: tuple[type[BaseException], ...] = ()) -> None:
    """Call ``main()``; on a user error print ``error: ...`` to stderr and exit with status 2.

    Args:
        main: the command; an integer it returns is the exit status.
        errors: the command's own user-error types, besides :data:`USER_ERRORS`.
    """
    try:
        code = main()
    except USER_ERRORS + tuple(errors) as exc:
        if "--debug" in sys.argv[1:]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(code, int) and not isinstance(code, bool) and code:
        raise SystemExit(code)
