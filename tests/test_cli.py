"""The shared command-line ending: user errors are one line and exit 2; bugs keep their traceback."""
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.cli import run_cli
from tasks.engine import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("error", [ValueError("bad.json: images[3].width must be > 0"),
                                   FileNotFoundError("image not found: a.jpg"),
                                   NonFiniteLossError(2, 17, {"loss": float("nan")})])
def test_user_errors_print_one_line_and_exit_2(error, capsys):
    def main():
        raise error

    with pytest.raises(SystemExit) as info:
        run_cli(main)
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_other_errors_keep_their_traceback():
    def main():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_cli(main)


def test_a_real_entry_point_names_the_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.detection.coverage", "--data-root", str(tmp_path), "--ann", str(missing)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr
