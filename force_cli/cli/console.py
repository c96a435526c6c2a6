"""Where the command line writes: results to stdout, progress, warnings and errors to stderr.

Results go to stdout (a checkpoint path, a table, one JSON document) so that shell pipelines can
use them; everything else goes to stderr. Text from files or users is printed literally
(``force_cli.safe_text``): no markup, control characters made visible.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from force_cli.safe_text import one_line


class _Stdout(Console):
    """rich exits with 1 when stdout's reader goes away; raise BrokenPipeError instead, which
    ``status.run_wrapper`` turns into a quiet exit 141."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


stdout = _Stdout(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)  # one-line messages stay one line, whatever $COLUMNS says


def error_line(message: str) -> None:
    """One line on stderr: 'error: ' and the message, printed literally."""
    stderr.print(Text.assemble(("error: ", "bold red"), one_line(message)), highlight=False, soft_wrap=True)


def plain_line(message: str) -> None:
    """One line on stderr without a prefix (an interruption, a summary), printed literally."""
    stderr.print(one_line(message), highlight=False, soft_wrap=True, markup=False)


def warn(message: str) -> None:
    """One line on stderr for something odd but usable in the input (printed even with --quiet)."""
    stderr.print(Text.assemble(("warning: ", "yellow"), one_line(message)), highlight=False, soft_wrap=True)


def progress_bar(quiet: bool) -> Progress:
    """A rich progress bar on stderr, silent when stderr is not a terminal or with --quiet."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=stderr,
        disable=quiet or not stderr.is_terminal,
        transient=False,
    )
