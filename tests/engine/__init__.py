"""The engine tests. Imported before any module of the package: the repo (``drill/``) and ``tests/`` (``cellkit``)
go on ``sys.path`` here, so the modules' imports need no particular order."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
