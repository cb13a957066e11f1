"""`python -m cli` runs the `archivist` command."""

from cli.commands import main

main(prog_name="archivist")
