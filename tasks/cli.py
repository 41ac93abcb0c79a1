"""The ending every command-line entry point shares (``datasets.io.run_cli``), under the tasks core's name.

    if __name__ == "__main__":
        run_cli(main)

A missing file, a bad value in a file or flag (``ValueError``, which the loaders raise naming the file and
field) and a non-finite loss (``tasks.engine.NonFiniteLossError``, naming the epoch and step) print
``error: <message>`` and exit with status 2, as argparse does for bad flags; ``--debug`` on the command
line shows the traceback instead. Anything else is a bug and keeps its traceback. The function lives in
``datasets.io`` so that the commands of ``backbone``, ``datasets`` and ``eval``, which never import the
tasks core, end the same way.
"""
from datasets.io import USER_ERRORS, run_cli

__all__ = ["USER_ERRORS", "run_cli"]
