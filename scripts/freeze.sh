#!/usr/bin/env bash
# Re-pin constraints.txt from the working virtual environment after changing requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
{ echo "# Every package of the environment, pinned (pip freeze of a working .venv; regenerate with scripts/freeze.sh)."
  .venv/bin/pip freeze --exclude-editable; } > constraints.txt
