"""Errors a user can cause. The CLI turns each into one line on stderr and an exit code."""


class ClassicNetsError(Exception):
    """Base class: a problem the user can fix, reported as one line without a traceback."""

    exit_code = 1


class UsageError(ClassicNetsError, ValueError):
    """A bad flag, name, size or config value (exit code 2)."""

    exit_code = 2


class UnknownModelError(UsageError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InputSizeError(UsageError):
    """An input smaller than the model can process."""


class DataError(ClassicNetsError):
    """Missing, empty or unreadable data (exit code 1)."""


class WeightsError(ClassicNetsError):
    """A weight or checkpoint file that cannot be used (exit code 1)."""


class WriteError(ClassicNetsError):
    """A file could not be written: disk full, quota, read-only file system, permissions (exit code 1)."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, at most `limit` characters and printable (garbled bytes from a
    damaged file are escaped), or the exception's type name when it has no message: what a one-line error quotes."""
    text = str(error).strip().encode("ascii", "backslashreplace").decode()
    return text.splitlines()[0][:limit] if text else type(error).__name__
