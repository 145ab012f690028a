"""Errors that mean "the user's input is wrong", as opposed to a bug.

Every message names the file (and line or key where there is one) and says what
to do, because the person reading it is looking at a cluster log, not our code.
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: a file, a key or a value the pipeline cannot work with."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 hint: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.hint = hint
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        text = where + message
        if hint:
            text += f"\n  What to do: {hint}"
        super().__init__(text)


class StageFailure(Exception):
    """A stage ran but its result is not usable (e.g. SfM registered too few images).

    Partial results stay on disk for inspection; the message says where.
    """
