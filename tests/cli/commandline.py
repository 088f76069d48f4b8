"""Running the command: in this process (`main`), or as the installed `python -m latentlab`; and the
one-line error every bad input must end in."""

import subprocess
import sys

PYTHON = [sys.executable, "-m", "latentlab"]


def run(*args):
    return subprocess.run([*PYTHON, *map(str, args)], capture_output=True, text=True, timeout=300)


def assert_one_line_error(capsys, *parts):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latentlab: error: "), err
    for part in parts:
        assert str(part) in err, err
