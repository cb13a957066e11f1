"""The engine-neutral search API: queries, pages, hits, date bounds, and the engine protocol."""
