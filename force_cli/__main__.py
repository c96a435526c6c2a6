"""Allow `python -m force_cli`."""

from force_cli.cli import main

if __name__ == "__main__":
    main()
