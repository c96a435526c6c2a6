"""Allow `python -m force_cli`, and the `force` entry point.

The CLI's imports (typer, rich; torch once a command needs it) take a moment; a Ctrl-C during
them ends the command with exit code 130 and one line, not a KeyboardInterrupt traceback.
"""

import sys


def main() -> None:
    # inside main: `python -m force_cli` and the entry point set the streams and allocator up first
    from force_cli import std_streams
    from force_cli.allocator import keep_freed_memory

    std_streams.prepare()  # before anything opens a file that could take a closed stream's descriptor
    keep_freed_memory()
    try:
        from force_cli.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (Ctrl-C) while starting; nothing was done\n")
        sys.exit(130)  # cli.status.INTERRUPTED, which is what was being imported
    cli_main()


if __name__ == "__main__":
    main()
