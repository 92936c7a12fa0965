"""The client distribution must import without TensorFlow or Keras (grpc, protobuf, numpy)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_importing_the_client_does_not_import_tensorflow() -> None:
    code = (
        "import json, sys\n"
        "import mcdropout_client, mcdropout_client.cli, mcdropout_client.aio\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'mcdropout', 'mcdropout_server'))\n"
        "print(json.dumps(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) == []
