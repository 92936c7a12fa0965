"""The container smoke test as a pytest test: ``pytest -m container tests/deploy``.

It builds the image (minutes), so the default test command leaves it out (``-m 'not container'``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "container-smoke-test"


@pytest.mark.container
@pytest.mark.timeout(1800)
def test_image_builds_serves_and_drains_on_sigterm() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    last = output.strip().splitlines()[-1]
    if last.startswith("SKIP:"):
        pytest.skip(last)
    assert last.startswith("PASS:"), output[-4000:]
