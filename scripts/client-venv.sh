#!/usr/bin/env bash
# Creates a virtual environment holding one third-party client, unmodified, apart from .venv.
#
# Usage: scripts/client-venv.sh VENV REQUIREMENT, e.g. .venv-kserve 'kserve==0.21.*'. The
# clients of the KServe world (tritonclient, kserve) pin protobuf < 7 while the project runs
# protobuf 7, so each gets its own environment; tests/oip drives the server with them.
# Prints the venv's python on success; reuses the venv while the pinned requirement is unchanged.
set -euo pipefail

VENV="$1"
REQUIREMENT="$2"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/requirement.txt" 2>/dev/null)" != "$REQUIREMENT" ]]; then
    if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" ]]; then
        echo "$VENV exists and is not a virtual environment; not replacing it" >&2
        exit 1
    fi
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$REQUIREMENT"
    echo "$REQUIREMENT" > "$VENV/requirement.txt"
fi
echo "$VENV/bin/python"
