#!/usr/bin/env bash
# Creates .venv-kserve: the KServe Python SDK (kserve 0.21), unmodified, in its own environment.
#
# kserve pins protobuf < 7 while the project runs protobuf 7, so it cannot share .venv. Its gRPC
# client (kserve.InferenceGRPCClient) drives the server's Open Inference Protocol API in
# tests/oip/test_oip_kserve.py; so can you: .venv-kserve/bin/python -c 'import kserve; ...'.
# The whole SDK is installed, as `pip install kserve` gives it (about 450 MB, a minute and a
# half): `import kserve` loads its model server, the Kubernetes client and pandas whichever part
# one uses, so no smaller set of dependencies can import the gRPC client.
# Prints the venv's python on success; reuses the venv while the pinned requirement is unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec bash "$ROOT/scripts/client-venv.sh" "${MCDROPOUT_KSERVE_VENV:-$ROOT/.venv-kserve}" \
    "kserve==0.21.*"
