"""Imported first by the benchmark scripts: the checkout a script is in comes before any
installed copy of Archivist, so running an export of another commit measures that commit."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
