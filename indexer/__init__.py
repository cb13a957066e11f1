"""Indexing, search and the archiving worker."""
