# Sourced by scripts/serve and scripts/test: creates .venv on first use (or when a pyproject
# changed) with the project, its server and dev extras, and the client, all editable.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"
stamp="$VENV/.mcdropout-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/client/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "setting up $VENV (first run: about a minute) ..." >&2
  "$PYTHON_BIN" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT/client" -e "$ROOT[server,dev]"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
