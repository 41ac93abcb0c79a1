"""Atomic writes for every file and folder the suite produces.

A reader, or a crash at any moment, sees either the previous content or the complete new one, never a
partial write. Files are written under a temp name in the destination folder, flushed and fsynced, then
``os.replace``d over the destination (atomic within one filesystem), and the folder is fsynced so the
rename itself survives a power loss. Folders (the cached datasets) are built under a temp name next to
the destination, their files fsynced, and renamed into place.

This module lives in ``datasets/`` because ``datasets``, ``eval``, ``backbone`` and ``tasks`` all write
files and ``datasets`` is the package every one of them may import without a cycle.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "USER_ERRORS",
    "run_cli",
    "atomic_dir",
    "atomic_path",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "is_user_error",
    "one_line",
    "prepare_output_dir",
    "prepare_output_file",
    "remove_dir",
]

PathLike = str | os.PathLike


def fsync_dir(path: PathLike) -> None:
    """Persist a folder's entries (a rename into it). Best effort: not every platform opens folders."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path, kind: str) -> Path:
    # Hidden, in the destination folder (so the rename stays on one filesystem), unique per writer.
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}")


def _new_temp_file(path: Path) -> Path:
    """Create an empty temp file next to ``path``; it gets the umask's mode (``mkstemp`` would force 0600)."""
    while True:
        tmp = _temp_name(path, "tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync_file(path: PathLike) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp file name next to ``path``; when the block succeeds it becomes ``path`` atomically.

    For writers that want a file name rather than an open file (ONNX export, ``faiss.write_index``).
    The temp file exists (empty) when the block starts; on an exception it is removed and ``path`` is
    left as it was. Parent folders are created.

    Example::

        with atomic_path("model.onnx") as tmp:
            torch.onnx.export(model, x, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: PathLike, data_or_writer: bytes | str | Callable[[IO[Any]], Any], mode: str = "wb") -> Path:
    """Write ``path`` atomically.

    Args:
        path: destination; parent folders are created.
        data_or_writer: the content (``bytes`` for mode "wb", ``str`` for "w"), or a function that
            writes to the open file (e.g. ``lambda f: torch.save(obj, f)``).
        mode: "wb" (binary) or "w" (text, UTF-8).

    Returns:
        ``path`` as a ``Path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            if callable(data_or_writer):
                data_or_writer(f)
            else:
                f.write(data_or_writer)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, text, "w")


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (``indent=None``: compact, for large files such as COCO json)."""
    if indent is None:
        text = json.dumps(obj, separators=(",", ":"))
    else:
        text = json.dumps(obj, indent=indent) + "\n"
    return atomic_write_text(path, text)


def replace_markdown_section(path: PathLike, heading: str, section: str, *, title: str = "") -> Path:
    """Put ``section`` (which starts with the line ``heading``, e.g. ``## Benchmark``) into the markdown file
    ``path`` in place of the section of that heading, up to the next ``## `` heading; appended when the file
    has none. A missing file starts with ``title``. Written atomically (the benchmarks' ``--write-docs``)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else title
    pattern = re.compile(r"^" + re.escape(heading) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    return atomic_write_text(path, text.strip() + "\n")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def remove_dir(path: PathLike) -> None:
    """Delete a folder tree so that no half-deleted folder is ever seen under its name.

    The folder is first renamed to a temp name next to it (atomic), then deleted.
    """
    path = Path(path)
    trash = _temp_name(path, "trash")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder next to ``path``; when the block succeeds it is renamed to ``path``.

    Everything written into it is fsynced before the rename, so after the rename the folder is complete
    on disk too. On an exception the temp folder is deleted.

    Raises:
        FileExistsError: ``path`` already exists (non-empty) when the block ends, e.g. another process
            finished the same folder first; the temp folder is deleted. Callers decide whether the
            existing one will do (see ``datasets.cache.build_once``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, "tmpdir")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        try:
            os.rename(tmp, path)  # replaces only an empty folder; a non-empty one raises
        except OSError as e:
            if path.exists():
                raise FileExistsError(f"{path} already exists") from e
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(path.parent)


# --------------------------------------------------------------------------------------------
# Where a command writes: checked before any work is done
# --------------------------------------------------------------------------------------------


def prepare_output_dir(path: PathLike, flag: str = "--out-dir") -> Path:
    """Create ``path`` (with its parents) and make sure files can be written into it, before any work.

    A command calls this first, so a bad ``--out-dir`` fails in a second, naming the flag, and not after
    minutes of evaluation. Writability is tried, not inferred from permission bits: root ignores those,
    while a read-only mount or a kernel filesystem refuses even root.

    Raises:
        ValueError: ``path`` is a file, a parent is a file, or the folder cannot be created or written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p} is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        above = next((q for q in p.parents if q.exists() and not q.is_dir()), None)
        raise ValueError(f"{flag} {p}: cannot create the folder, {above or 'a parent'} is a file") from None
    except OSError as e:
        raise ValueError(f"{flag} {p}: cannot create the folder ({e.strerror or e}); choose another one") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{flag} {p} is not writable ({e.strerror or e}); choose another folder") from None
    return p


def prepare_output_file(path: PathLike, flag: str = "--out") -> Path:
    """The same check for a file a command will write: not a folder, and its folder writable."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p} is a folder; give a file name (e.g. {p / 'out'})")
    prepare_output_dir(p.parent, f"{flag} {p}: folder")
    return p


# --------------------------------------------------------------------------------------------
# The ending of every command
# --------------------------------------------------------------------------------------------

# Errors that mean "the input is wrong", not "the code is wrong". Any other exception class can say the
# same with a class attribute ``user_error = True`` (the engine's non-finite-loss stop, the face index's).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
)
# OSErrors that say the machine's storage refuses the write (full, over quota, read-only): the user's to fix.
USER_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS) if e is not None)


def is_user_error(exc: BaseException, errors: tuple[type[BaseException], ...] = ()) -> bool:
    """True for an error the user can fix (their input, their disk), false for a bug."""
    return (isinstance(exc, USER_ERRORS + tuple(errors)) or bool(getattr(exc, "user_error", False))
            or (isinstance(exc, OSError) and exc.errno in USER_ERRNOS))


def one_line(message: str) -> str:
    """``message`` on one line.

    An error raised inside a DataLoader worker reaches the main process as the same exception class
    holding "Caught X in DataLoader worker process N" and the worker's whole traceback: its last line,
    the original message, is what the user needs. Any other multi-line text (a library's advice
    paragraphs) is joined by " | ", blank lines dropped.
    """
    lines = [" ".join(line.split()) for line in message.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > 2 and lines[0].startswith("Caught ") and " in DataLoader worker process " in lines[0] \
            and lines[1].startswith("Original Traceback"):
        where = lines[0][len("Caught "):].split(" in ", 1)[1].rstrip(".")
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        original = rest if sep and " " not in head else last  # drop "module.ErrorClass: "
        return f"{original} (in {where})"
    return " | ".join(lines) or message


def run_cli(main: Callable[[], Any], errors: tuple[type[BaseException], ...] = ()) -> None:
    """Run a command's ``main()``: a user error prints one ``error: ...`` line and exits with status 2.

    Exit statuses: 0 done, 2 a user error (one line naming the file, field or value), 1 a bug (Python's
    traceback; also what a command returns for "ran, but the result fails its check", e.g. an export
    whose graph does not match PyTorch).

    The loaders raise their errors naming the file, field and value, so the message alone says what
    to fix; ``--debug`` on the command line shows the traceback instead. Anything that is not a user
    error is a bug and keeps its traceback. An integer ``main()`` returns is the exit status.

    Args:
        main: the command.
        errors: more user-error types of that command.
    """
    try:
        code = main()
    except Exception as exc:
        if not is_user_error(exc, errors):
            raise
        if "--debug" in sys.argv[1:]:
            raise
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(code, int) and not isinstance(code, bool) and code:
        raise SystemExit(code)
