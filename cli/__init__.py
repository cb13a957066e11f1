"""The `archivist` command: it wires every layer, so it sits above them all."""
