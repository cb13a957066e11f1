"""The search engine built on Whoosh's file format; every Whoosh and numpy import lives here."""

import sys

from indexer.whoosh import analysis as _analysis

# Indexes written before the search engine moved into this package pickled their schema's
# tokenizers as `indexer.analysis.*`, and Whoosh unpickles the schema whenever it opens an
# index: that name still leads to them.
sys.modules.setdefault("indexer.analysis", _analysis)
