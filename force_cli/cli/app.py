"""The `force` Typer app: its commands, one-line usage errors, --version, and the entry point.

Each command lives in its own module of this package, thin over a library function; this module
only puts them together. Nothing imported here loads torch (docs/architecture.md): `force --help`,
`force --version`, every command's --help and the errors that need no tensor answer at once.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

import force_cli
from force_cli.cli import ablate, bench, evaluate, export, inspect, prune, shrink, sweep, train
from force_cli.cli.console import error_line, stdout
from force_cli.cli.status import INTERRUPTED, run_main


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, missing value, bad type) as one line on stderr, exit 2,
    instead of Typer's five-line box; the one line names the command's --help."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:  # Typer >= 0.20 vendors click; older Typer uses click itself
            from typer._click import exceptions
        except ImportError:
            from click import exceptions
        NoArgsIsHelpError = getattr(exceptions, "NoArgsIsHelpError", ())
        ClickException = exceptions.ClickException
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "force"
            message = exc.format_message().rstrip(".")
            error_line(f"{message}; see '{where} --help'")
            code = exc.exit_code
        except typer.Abort:
            code = INTERRUPTED
        code = code if isinstance(code, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


app = typer.Typer(
    name="force",
    cls=OneLineErrors,
    help="Prune neural networks at initialization (FORCE, Iterative SNIP, SNIP, GraSP, SynFlow, ...) "
    "into portable sparse checkpoints, then train, evaluate and inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# In the order `force --help` lists them.
app.command(epilog=prune.EPILOG)(prune.prune)
app.command(epilog=ablate.EPILOG)(ablate.ablate)
app.command(epilog=inspect.EPILOG)(inspect.inspect)
app.command(epilog=train.EPILOG)(train.train)
app.command("eval", epilog=evaluate.EPILOG)(evaluate.evaluate)
app.command(epilog=sweep.EPILOG)(sweep.sweep)
app.command(epilog=export.EPILOG)(export.export)
app.command(epilog=shrink.EPILOG)(shrink.shrink)
app.command(epilog=bench.EPILOG)(bench.bench)


def torch_version() -> str:
    """torch's version as ``torch.__version__`` gives it, read from its version file: importing
    torch to print a version would take seconds (torch-free start-up)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    spec = importlib.util.find_spec("torch")  # finds the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            tree = ast.parse((Path(folder) / "version.py").read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and any(getattr(target, "id", None) == "__version__" for target in node.targets)):
                return str(node.value.value)
    import torch  # an unusual installation: ask torch itself

    return torch.__version__


def _version(value: bool):
    if value:
        stdout.print(f"force-cli {force_cli.__version__} (torch {torch_version()}, checkpoint format {force_cli.FORMAT_VERSION})")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
):
    """force-cli: pruning at initialization, as a command-line tool."""


def main():
    """The `force` command. Ctrl-C or a closed stdout outside a command (while parsing) ends quietly too."""
    run_main(app)


if __name__ == "__main__":
    main()
