"""The one edge between the library and the user: what a command raises becomes one line on
stderr and an exit code (``command_errors``)."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from typing import NoReturn

import typer

from camcli.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE, CamcliError


def _error(message: str) -> None:
    from camcli.display import error_line, stderr_console  # rich: not for `camcli --help`

    error_line(stderr_console(), message)


def stdout_closed() -> NoReturn:
    """End quietly when the reader of stdout has gone (``--json | head -1``).

    stdout is pointed at /dev/null first: Python's flush at exit would otherwise fail on the
    closed pipe and print "Exception ignored ... BrokenPipeError".
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it)
        pass
    else:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    raise typer.Exit(code=EXIT_BROKEN_PIPE)


def internal_error(exc: Exception) -> NoReturn:
    """A bug: one line and exit 2, or the traceback too with ``CAMCLI_DEBUG=1``."""
    if os.environ.get("CAMCLI_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc)
    _error(f"internal error: {type(exc).__name__}: {exc} (set CAMCLI_DEBUG=1 for the traceback)")
    raise typer.Exit(code=EXIT_USAGE) from None


@contextlib.contextmanager
def command_errors(*, interrupted: str = "", each_line: bool = False) -> Iterator[None]:
    """The one place that turns what a command raises into what the user sees and its exit code.

    A camcli error: ``error: message`` on stderr (one line, or each line of a multi-line
    message with ``each_line``) and its exit code; stdout's reader gone (``| head -1``): quiet,
    141; Ctrl-C or SIGTERM: ``interrupted`` (if any) and 130; anything else is a bug: one line
    and 2 (the traceback with ``CAMCLI_DEBUG=1``). typer's own exits pass through.
    """
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except CamcliError as exc:
        for line in exc.message.splitlines() if each_line else [exc.message]:
            _error(line)
        raise typer.Exit(code=exc.exit_code) from None
    except BrokenPipeError:
        stdout_closed()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as camcli.signals.Interrupted
        if interrupted:
            from camcli.display import stderr_console

            stderr_console().print(interrupted)
        raise typer.Exit(code=getattr(exc, "exit_code", EXIT_INTERRUPTED)) from None
    except Exception as exc:
        internal_error(exc)


def go_offline(offline: bool) -> None:
    """``--offline`` reaches the model sources (and Ray's workers, which inherit the
    environment) as ``CAMCLI_OFFLINE=1``: camcli.models.download reads it."""
    if offline:
        os.environ["CAMCLI_OFFLINE"] = "1"
