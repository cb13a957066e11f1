"""`python -m archivist` runs the `archivist` command."""

from archivist.cli import main

main()
