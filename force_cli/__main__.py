"""Allow `python -m force_cli`, and the `force` entry point.

The CLI's imports (typer, rich; torch once a command needs it) take a moment; a Ctrl-C during
them ends the command with exit code 130 and one line, not a KeyboardInterrupt traceback.
A process that held a gloo process group (torchrun on CPU) ends without the interpreter's
teardown, where a leftover gloo thread could abort it (``distributed.exit_after_group``).
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
    try:
        cli_main()
    except SystemExit as done:
        # loaded only by the commands that can run under torchrun
        distributed = sys.modules.get("force_cli.distributed")
        if distributed is not None:
            distributed.exit_after_group(done.code)  # after a gloo group: ends here, skipping teardown
        raise


if __name__ == "__main__":
    main()
