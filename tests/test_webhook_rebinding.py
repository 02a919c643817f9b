"""A name checked at submit is checked again before the connection: DNS rebinding is refused.

The service runs in a network namespace of its own (`unshare -n`, as root) where only loopback
exists, with its own /etc/hosts bind-mounted (`unshare -m`): `hook.example` is public at the
submit, then points at 127.0.0.1 before the delivery. Nothing can leave the machine, even if
the check were broken: the namespace has no route anywhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PUBLIC = "93.184.216.34"  # example.com's; in the namespace nothing routes there

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
    reason="needs root, unshare and ip for a network namespace of its own")


def test_a_name_that_moves_to_loopback_after_the_submit_gets_no_connection(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{PUBLIC} hook.example\n")
    script = (f"ip link set lo up && mount --bind {hosts} /etc/hosts && "
              f"exec {sys.executable} -m tests.rebind_child {hosts}")
    result = subprocess.run(["unshare", "--net", "--mount", "sh", "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])

    assert outcome["submit"] == 202, "at the submit the name was public"
    assert outcome["status"] == "succeeded", "a refused delivery never touches the job"
    webhook = outcome["webhook"]
    assert webhook["delivered"] == [] and webhook["pending"] == 0
    assert "127.0.0.1" in webhook["last_error"] and "loopback" in webhook["last_error"]
    assert outcome["connections"] == 0, "nothing connected to the address the name moved to"
