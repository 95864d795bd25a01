"""The `autolora` command: verb discovery, user errors as one line with exit 2."""

import subprocess
import sys

from autolora.cli import EXIT_USER_ERROR, build_parser, main


def test_every_verb_is_discovered():
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    for verb in (
        "train",
        "evaluate",
        "data",
        "weights",
        "pretrain",
        "aggregate",
        "audit",
        "plan",
        "bench",
    ):
        assert verb in verbs


def test_a_verb_option_named_run_does_not_replace_the_verb(tmp_path, capsys):
    # `evaluate --run DIR` must reach the evaluate verb: a missing run dir is a user error.
    code = main(
        [
            "evaluate",
            "--run",
            str(tmp_path / "nope"),
            "--data",
            str(tmp_path),
            "--checkpoint",
            "final",
            "--out",
            str(tmp_path / "e.json"),
        ]
    )
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("autolora evaluate: error:") and err.count("\n") == 1


def test_help_runs_as_a_console_command():
    result = subprocess.run(
        [sys.executable, "-m", "autolora.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in result.stdout and "audit" in result.stdout
