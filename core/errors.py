"""The one family of errors a user can cause (bad YAML, unknown names, missing data).

The CLI prints these briefly and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: names the file, key path, value and allowed values."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class SuiteErrors(UserError):
    """Every problem found while validating one suite, reported together."""

    def __init__(self, problems: list[UserError]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
