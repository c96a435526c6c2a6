"""Exit codes, named once, and the one place that turns what a command raised into one of them.

As pip's ``cli/status_codes.py`` and ``Command._run_wrapper``: the library raises typed errors
(``force_cli.errors``; each ForceError carries ``exit_code``: 2 for bad input, 1 for a valid input
whose run failed; a ``Stopped`` run, 130 or 143); ``run_wrapper`` prints one line and exits with
the code, never a traceback.
Commands do not choose numbers: they raise, or return ``fail``/``stopped`` with a name from here.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

import typer

from force_cli.cli.console import error_line, plain_line
from force_cli.errors import SIGNAL_EXIT, ForceError, Stopped
from force_cli.safe_text import brief

SUCCESS = 0
FAILED = 1  # the input was valid but the run failed (diverged, disconnected, a worker died), or a bug
BAD_INPUT = 2  # ForceError's exit_code, and click's for a usage error
INTERRUPTED = SIGNAL_EXIT["SIGINT"]  # 130: Ctrl-C
STDOUT_CLOSED = 128 + signal.SIGPIPE  # 141: the reader of stdout went away (`force inspect X | head -1`)
TERMINATED = SIGNAL_EXIT["SIGTERM"]  # 143: SIGTERM (a scheduler's or `kill`'s stop)


def fail(message: str, code: int = BAD_INPUT) -> typer.Exit:
    """One line on stderr, printed literally (no markup, control characters made visible)."""
    error_line(message)
    return typer.Exit(code)


def stopped(message: str, code: int) -> typer.Exit:
    """An interruption is not an error: one line without the 'error:' prefix, exit 130 or 143."""
    plain_line(message)
    return typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs; exit code 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


def interruption(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped the command, for its message, and the exit code that says so."""
    return ("SIGTERM", TERMINATED) if isinstance(exc, Terminated) else ("Ctrl-C", INTERRUPTED)


def _interrupted(exc: KeyboardInterrupt) -> typer.Exit:
    name, code = interruption(exc)
    written = getattr(exc, "written", None)
    if written is not None:
        return stopped(f"interrupted ({name}) just after {written} was written completely", code)
    return stopped(f"interrupted ({name}); no file was written or left half-written", code)


def stdout_closed() -> typer.Exit:
    """The reader of stdout went away (`force inspect X | head -1`): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return typer.Exit(STDOUT_CLOSED)


def run_wrapper(command):
    """Turn library errors into one line + exit 2 (1 for a failed run), a run stopped after saving
    its progress, Ctrl-C and SIGTERM into exit 130 or 143, a closed stdout into a quiet exit 141, a
    bug into one line + exit 1; never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            result = command(*args, **kwargs)
            sys.stdout.flush()
            return result
        except ForceError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except Stopped as exc:  # not an error: it says where the progress went (rank 0 alone, under torchrun)
            raise (stopped(str(exc), exc.exit_code) if exc.announce else typer.Exit(exc.exit_code)) from None
        except KeyboardInterrupt as exc:
            raise _interrupted(exc) from None
        except BrokenPipeError:
            raise stdout_closed() from None
        except OSError as exc:  # a last resort: every expected OS error is already a ForceError
            where = f" ({exc.filename})" if exc.filename else ""
            raise fail(f"{exc.strerror or exc}{where}; check the path and free space, then retry") from None
        except (MemoryError, RecursionError) as exc:
            raise fail(f"out of memory or too deeply nested input ({type(exc).__name__}); "
                       "check the input's sizes") from None
        except (typer.Exit, typer.Abort):
            raise
        except SystemExit as exc:  # never force's own (it ends commands with typer.Exit): code it runs, a --model's
            raise fail(f"code the command ran (a --model module?) called sys.exit({brief(exc.code)}); "
                       "remove that call from it") from None
        except Exception as exc:  # a bug: still one line, exit 1; FORCE_DEBUG=1 shows the traceback
            if os.environ.get("FORCE_DEBUG"):
                raise
            raise fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; this is a "
                       "bug in force-cli, please report it (FORCE_DEBUG=1 shows the traceback)", FAILED) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return wrapper


def run_main(app) -> None:
    """Run the Typer app; Ctrl-C or a closed stdout outside a command (while parsing) ends quietly too."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (Ctrl-C)\n")
        sys.exit(INTERRUPTED)
    except BrokenPipeError:
        raise SystemExit(stdout_closed().exit_code) from None
