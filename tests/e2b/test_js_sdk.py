"""The official E2B JavaScript SDK against `sbx serve`'s E2B surface: runs
js/sdk.mjs under node, once per runtime, with the SDK's environment set for
the server (conftest.py's ``e2b_env``), and holds it to exit 0 after every
step of its flow (create, commands, files, watchDir, setTimeout, connect,
pause and resume, list, kill; see the script's header). The script stops at
the first wrong result and says which on stderr, which is printed here.

It fails, never skips, without node or the node modules (scripts/test
installs and names them: SBX_E2B_NODE_MODULES).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from helpers import rest_sandbox

SCRIPT = Path(__file__).resolve().parent / "js" / "sdk.mjs"
# The steps sdk.mjs walks; all must have passed for its exit 0.
EXPECTED_STEPS = 14
SCRIPT_TIMEOUT_S = 600


def test_the_js_sdk_core_flow(e2b_env, admin):
    named = os.environ.get("SBX_E2B_NODE_MODULES")
    assert named, "SBX_E2B_NODE_MODULES is not set: run the suite through scripts/test"
    node_modules = Path(named)
    assert (node_modules / "e2b" / "package.json").is_file(), f"no e2b in {node_modules}"
    node = shutil.which("node")
    assert node is not None, "node is not on PATH: scripts/setup installs nodejs"

    finished = subprocess.run(
        [node, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        env=dict(e2b_env.env, SBX_E2B_NODE_MODULES=str(node_modules)),
        stdin=subprocess.DEVNULL,
        cwd=SCRIPT.parent,
    )
    # Shown with the test's report when it fails.
    print(f"sdk.mjs stderr:\n{finished.stderr}\nsdk.mjs stdout:\n{finished.stdout}")
    assert finished.returncode == 0, f"sdk.mjs exited {finished.returncode}:\n{finished.stderr}"

    summary = json.loads(finished.stdout.strip().splitlines()[-1])
    assert summary["steps"] == EXPECTED_STEPS, summary
    assert len(summary["sandboxes"]) == 2, summary
    # Everything it made, it killed: gone for sbx too.
    for sandbox_id in summary["sandboxes"]:
        assert rest_sandbox(admin, sandbox_id) is None, sandbox_id
