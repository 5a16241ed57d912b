"""CLI usage errors: exit 2, one line on stderr, the program named once with the (sub)command's own help."""

import subprocess
import sys
from pathlib import Path

import pytest

from ic_core.cli import main, usage_hint

ROOT = Path(__file__).resolve().parents[2]


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("argv", "hint", "missing"), [
    ([], "python -m ic_core --help", "command"),
    (["study", "--data"], "python -m ic_core study --help", "--data"),  # a bare `study` is checked after parsing
    (["probe", "transfer"], "python -m ic_core probe transfer --help", "--train"),
    (["policy", "fit"], "python -m ic_core policy fit --help", "--run"),
    (["gate", "--prompt", "hi"], "python -m ic_core gate --help", "--policy"),
])
def test_missing_argument_names_the_program_once(argv, hint, missing, capsys):
    """The hint is `python -m` plus the command path, with `ic_core` exactly once."""
    line = _usage_error(argv, capsys)
    assert f"(see `{hint}`)" in line and missing in line
    assert line.count("ic_core") == 1


def test_study_without_data_or_merge_is_one_line_exit_2(capsys):
    assert main(["study"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "study needs --data" in lines[0] and "study merge" in lines[0]


def test_unknown_option_and_bad_choice(capsys):
    """An unknown option and an invalid choice give the same one-line form."""
    line = _usage_error(["study", "--data", "capitals", "--bogus"], capsys)
    assert "unrecognized arguments: --bogus" in line and line.endswith("(see `python -m ic_core study --help`)")
    line = _usage_error(["nope"], capsys)
    assert "invalid choice: 'nope'" in line and line.endswith("(see `python -m ic_core --help`)")


def test_usage_hint_joins_the_command_path():
    """Extra whitespace in a prog does not leak into the hint."""
    assert usage_hint("ic_core  probe transfer") == "python -m ic_core probe transfer --help"


def test_subprocess_prints_nothing_but_the_line():
    """Through `python -m ic_core`: no usage block, no traceback, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "ic_core", "probe", "transfer", "--train", "a"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("error: the following arguments are required: --test "
                                   "(see `python -m ic_core probe transfer --help`)")
