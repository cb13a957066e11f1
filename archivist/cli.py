"""The `archivist` command where the package layout names it: `archivist.cli:main`.

The commands live in `cli/commands.py`: they wire every layer, and this shared core imports
none of the layers above it, so the entry point here loads them only when it is called.
"""

from __future__ import annotations

from typing import Any


def main(args: list[str] | None = None, **options: Any) -> Any:
    """Run the `archivist` command (click's `main`: it exits with the command's status).

    :param args: the arguments, as on the command line; default: `sys.argv[1:]`
    :param options: passed on to click, such as `standalone_mode=False`
    """
    from cli.commands import main as command

    return command(args, prog_name="archivist", **options)
