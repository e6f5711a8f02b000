"""Test helper: run the command line on a user error and return the one line it printed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from omniforcing.cli import USER_ERROR_EXIT_CODE, main


def user_error(capsys: pytest.CaptureFixture[str], args: Sequence[str]) -> str:
    """Run ``omniforcing ARGS``; assert exit code 2, exactly one ``error:`` line on stderr and no traceback.

    Other stderr lines (progress bars, log records printed before the error) are allowed. Returns the message.
    """
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == USER_ERROR_EXIT_CODE, err
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0].removeprefix("error: ")
