"""Every `devicefabric` program starts by raising its soft descriptor limit to the hard limit.

systemd's default soft limit (1024) is far below what a broker with many connections needs; the
hard limit is what the administrator granted. Shown on a real interpreter started under
`prlimit` with a soft limit below its hard limit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

PROBE = """
import resource
from devicefabric.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_console_script_raises_the_soft_descriptor_limit_to_the_hard_limit() -> None:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) not installed")
    result = subprocess.run(
        [prlimit, "--nofile=256:1024", sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "1024"
