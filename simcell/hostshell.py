"""The login command of every simulated host (sshd ``ForceCommand``; also used at boot).

It gives the session the host's own view of the usual paths (``/etc/kcnd``, ``/var/kcnd/data``...)
by bind-mounting the host's root directories in a private mount namespace, puts the host's tools
(``systemctl``, ``kcn``, ``ip``...) first on PATH, then runs the client's command with bash. SFTP
arrives here as the sftp-server command and runs in the same view.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from simcell import paths

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def bind(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    _check(_libc.mount(str(source).encode(), str(target).encode(), None, MS_BIND | MS_REC, None), f"bind {target}")


def bind_one(source: Path, target: Path) -> None:
    """A non-recursive bind: ``source``'s own directory tree, not what is mounted below it."""
    _check(_libc.mount(str(source).encode(), str(target).encode(), None, MS_BIND, None), f"bind {target}")


def enter_host(host: str) -> None:
    """Private mount namespace with the host's directories (and mounted volumes) in place."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    root = paths.host_root(host)
    for rel in paths.HOST_MOUNTS:
        (root / rel).mkdir(parents=True, exist_ok=True)
        bind(root / rel, Path("/") / rel)
    mounts = paths.host_dir(host) / "mounts.json"
    if mounts.exists():
        for mountpoint, volume_dir in sorted(json.loads(mounts.read_text()).items()):
            bind(Path(volume_dir), Path(mountpoint))


def ssh_fault(host: str, command: str) -> str | None:
    if not paths.SSH_FAULTS_FLAG.exists():  # the usual case: no fault waits, no round trip (and no urllib import)
        return None
    import urllib.parse
    import urllib.request

    url = f"{os.environ['SIMCELL_COORD']}/ssh/fault?" + urllib.parse.urlencode({"host": host, "command": command})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read()).get("kind")
    except OSError:
        return None


def main() -> int:
    host = os.environ["SIMCELL_HOST"]
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    fault = None if os.environ.get("SIMCELL_BOOT") else ssh_fault(host, command)
    if fault == "drop":
        # The connection drops before the command runs: kill our sshd session process.
        os.kill(os.getppid(), signal.SIGKILL)
        return 255
    enter_host(host)
    env = dict(os.environ)
    env["PATH"] = f"{paths.REPO / 'simcell' / 'hostbin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["SIMCELL_PY"] = paths.PYTHON
    env["PYTHONPATH"] = str(paths.REPO)
    os.chdir("/root" if Path("/root").is_dir() else "/")
    if not command:
        os.execve("/bin/bash", ["bash", "-l"], env)
    if fault == "drop-after":
        # The command runs to its end, then the connection drops before its exit status is sent:
        # the client cannot tell whether it ran (the case a retried step must handle).
        subprocess.run(["/bin/bash", "-c", command], env=env)
        os.kill(os.getppid(), signal.SIGKILL)
        return 255
    os.execve("/bin/bash", ["bash", "-c", command], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
