"""Archivist's shared core: configuration, the record model, the active database, retention."""
