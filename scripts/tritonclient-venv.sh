#!/usr/bin/env bash
# Creates .venv-tritonclient: NVIDIA's official Triton client, unmodified, in its own environment.
#
# tritonclient[grpc] pins protobuf < 7 while the project runs protobuf 7, so it cannot share .venv.
# tests/oip/test_oip_tritonclient.py drives the server's Open Inference Protocol API with it; so
# can you: .venv-tritonclient/bin/python -c 'import tritonclient.grpc as g; ...'.
# Prints the venv's python on success; reuses the venv while the pinned requirement is unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MCDROPOUT_TRITONCLIENT_VENV:-$ROOT/.venv-tritonclient}"
REQUIREMENT="tritonclient[grpc]==2.73.0"
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
