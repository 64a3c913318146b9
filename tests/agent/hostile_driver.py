"""Drives the hostile kernel-settings suite from outside the sandbox, as whichever user runs it (the test
runs it as itself, and as root also as ``nobody``), and prints one JSON object:

    repro       the issue's reproduction, verbatim: stdout and stderr of the sandboxed command
    host_view   /proc/<pid>/status of a sandboxed process as the host sees it (its real uid, capabilities)
    probe       hostile_probe.py's report from inside a sandbox

    python hostile_driver.py '{"src": DIR, "workspace_root": DIR, "config": {SandboxConfig fields}}'
"""

import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

options = json.loads(sys.argv[1])
sys.path.insert(0, options["src"])

from lagoon.agent.config import SandboxConfig  # noqa: E402
from lagoon.agent.sandbox import Sandbox  # noqa: E402
from lagoon.agent.seccomp import SYSCALLS  # noqa: E402

config = SandboxConfig(**options["config"])
root = Path(options["workspace_root"])
out = {}

# The reproduction, as filed.
r = Sandbox(tempfile.mkdtemp(dir=root), config).run(
    ['sh', '-c', 'cat /proc/self/uid_map; echo 6 > /proc/sys/kernel/printk_ratelimit && echo wrote'])
out["repro"] = {"stdout": r.stdout, "stderr": r.stderr, "exit_code": r.exit_code}

# What the host sees of a sandboxed process.
marker = f"{os.getpid() % 1000}.{time.time_ns() % 1000}1"
sandbox = Sandbox(tempfile.mkdtemp(dir=root), config)
thread = threading.Thread(target=sandbox.run, args=(["sleep", marker],), kwargs={"timeout_s": 120})
thread.start()
wanted = f"sleep\0{marker}\0".encode()
deadline, view = time.monotonic() + 90, None
while view is None and time.monotonic() < deadline:
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path("/proc", entry, "cmdline").read_bytes() == wanted:
                status = Path("/proc", entry, "status").read_text().splitlines()
                view = {k: v.strip() for k, v in (line.split(":\t", 1) for line in status if ":\t" in line)}
                os.kill(int(entry), 9)
                break
        except OSError:
            continue
    time.sleep(0.02)
thread.join()
out["host_view"] = view

# The attacks, from inside.
abi = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[platform.machine().lower()]
workspace = Path(tempfile.mkdtemp(dir=root))
shutil.copy(Path(__file__).with_name("hostile_probe.py"), workspace / "hostile_probe.py")
r = Sandbox(workspace, config).run(["python3", "hostile_probe.py", json.dumps({"numbers": SYSCALLS[abi]})])
try:
    out["probe"] = json.loads((workspace / r.stdout_path).read_text())  # the full output, not the truncated view
except json.JSONDecodeError:
    out["probe"] = {"failed": r.describe_end(), "stdout": r.stdout, "stderr": r.stderr}
print(json.dumps(out))
