#!/usr/bin/env bash
# Creates .venv-tritonclient: NVIDIA's official Triton client, unmodified, in its own environment.
#
# tritonclient[grpc] pins protobuf < 7 while the project runs protobuf 7, so it cannot share .venv.
# tests/oip/test_oip_tritonclient.py drives the server's Open Inference Protocol API with it; so
# can you: .venv-tritonclient/bin/python -c 'import tritonclient.grpc as g; ...'.
# Prints the venv's python on success; reuses the venv while the pinned requirement is unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec bash "$ROOT/scripts/client-venv.sh" "${MCDROPOUT_TRITONCLIENT_VENV:-$ROOT/.venv-tritonclient}" \
    "tritonclient[grpc]==2.73.0"
