"""The project's exceptions. The CLI maps each to a one-line message and an exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
#: Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports it); finished outputs are kept.
EXIT_INTERRUPTED = 130
#: What a shell reports for a writer whose reader went away (128 + SIGPIPE): ``camcli run
#: --json | head -1`` is a normal end, not a failure.
EXIT_BROKEN_PIPE = 141


def install_extra(extra: str) -> str:
    """How to install one of camcli's extras, for the user who has what this project ships: a
    checkout (``camcli`` on the package index is an unrelated project, so no line here names
    the index)."""
    return f"`uv sync --extra {extra}` in the camcli checkout (or `pip install '.[{extra}]'` there)"


class CamcliError(Exception):
    """Base class: a problem camcli can explain in one line."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(CamcliError):
    """Bad options or setup (unknown model, layer, class...): exit 2 before any work."""


class WeightsUnavailableError(UsageError):
    """Pretrained weights are neither cached nor downloadable."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class InputError(CamcliError):
    """One input file cannot be used (unreadable, not an image...). The batch goes on."""

    exit_code = EXIT_SOME_FAILED


class CamcliWarning(UserWarning):
    """Something the user should hear once on stderr (conflicting options, a blank map...).

    The library warns with ``warnings.warn(message, CamcliWarning)``; the CLI prints each
    distinct message once as ``warning: <message>`` and the run goes on.
    """
