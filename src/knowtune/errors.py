"""User-facing errors: a message that names the file, line or config key and the fix.

The CLI turns any :class:`KnowtuneError` into a one-paragraph message on stderr and
exit status 2, without a traceback. Library code raises it for bad input; programming
errors stay ordinary exceptions.
"""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE = 2


class KnowtuneError(Exception):
    """Bad input from the user: what is wrong, where, and how to fix it."""

    def __init__(self, message: str, *, fix: str | None = None):
        self.fix = fix
        super().__init__(message)

    def render(self) -> str:
        text = str(self)
        if self.fix:
            text += f"\nFix: {self.fix}"
        return text


class DataError(KnowtuneError):
    """A dataset file is malformed; the message names the file and line."""

    def __init__(self, path: str | Path, message: str, *, line: int | None = None, fix: str | None = None):
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}", fix=fix)


class ConfigError(KnowtuneError):
    """A config value is invalid; the message names the key."""
