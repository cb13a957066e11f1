"""The search engine built on Whoosh's file format; every Whoosh and numpy import lives here."""
