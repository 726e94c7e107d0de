"""The commands a DAG runs on a simulated host: systemctl, kcn/kpn, ip, arping, mount, umount.

Each behaves like the real tool in what an operator reads from it (output shape, exit code), and
reports to the cell's coordinator what the real one would change in the world (an IP address taken,
a volume mounted). They run inside the host's mount namespace (see ``simcell.hostshell``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from simcell import console, hostshell, paths

UNITS = {"kcnd": "kcn", "kpnd": "kpn"}


def coord(path: str, payload: dict) -> dict:
    import urllib.error
    import urllib.request  # here, not at the top: ~30 ms that systemctl and kcn, most of the commands, never need

    req = urllib.request.Request(
        os.environ["SIMCELL_COORD"] + path, data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}") | {"status": exc.code}


def die(msg: str, code: int = 1) -> int:
    print(msg, file=sys.stderr)
    return code


def ipc_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


# ----- systemctl -------------------------------------------------------------------------------------
class Unit:
    def __init__(self, name: str):
        self.name = name.removesuffix(".service")
        if self.name not in UNITS:
            raise KeyError(self.name)
        self.conf = Path(f"/etc/{self.name}/conf/{self.name}.conf")
        self.pidfile = Path(f"/var/{self.name}/{self.name}.pid")
        self.failed = Path(f"/var/{self.name}/{self.name}.failed")
        self.enabled = Path(f"/etc/{self.name}/.enabled")

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return None
        # All simulated hosts share one PID space: a pid file copied from another host (an image) must not
        # name that host's process, as it could not on a real machine.
        mine = f"SIMCELL_HOST={os.environ.get('SIMCELL_HOST', '')}".encode() in environ
        return pid if mine and state not in ("Z", "X") else None

    def env(self) -> dict:
        if not self.conf.exists():
            raise FileNotFoundError(f"{self.conf}: No such file or directory")
        out = subprocess.run(
            ["bash", "-c", 'set -a; . "$1"; exec env -0', "_", str(self.conf)], capture_output=True, check=True
        ).stdout
        env = dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)
        return env | {k: os.environ[k]
                      for k in ("SIMCELL_HOST", "SIMCELL_COORD", "SIMCELL_DIR", "SIMCELL_OWNER", "PYTHONPATH")
                      if k in os.environ}

    def start(self) -> int:
        if self.pid():
            return 0
        env = self.env()
        self.failed.unlink(missing_ok=True)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [os.environ["SIMCELL_PY"], "-m", "simcell.node", self.name],
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )
        self.pidfile.write_text(str(proc.pid))
        ipc = Path(env.get("DATA_DIR") or f"/var/{self.name}/data") / "klay.ipc"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pidfile.unlink(missing_ok=True)
                return die(
                    f"Job for {self.name}.service failed because the control process exited with error code.\n"
                    f'See "systemctl status {self.name}.service" and the log in LOG_DIR for details.'
                )
            if ipc_answers(ipc):  # a killed node leaves its socket file behind: connect, don't just look
                return 0
            time.sleep(0.05)
        return 0

    def stop(self) -> int:
        pid = self.pid()
        if not pid:
            self.pidfile.unlink(missing_ok=True)
            return 0
        timeout = float(self.env().get("STOP_TIMEOUT") or 10)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid():
            time.sleep(0.05)
        if self.pid():
            os.kill(pid, signal.SIGKILL)  # what the init script does after STOP_TIMEOUT
            while self.pid():
                time.sleep(0.05)
        self.pidfile.unlink(missing_ok=True)
        return 0

    def state(self) -> str:
        if self.pid():
            return "active"
        return "failed" if self.failed.exists() else "inactive"

    def status(self) -> int:
        state = self.state()
        detail = {
            "active": f"active (running)\n   Main PID: {self.pid()} ({UNITS[self.name]})",
            "failed": "failed (Result: exit-code)\n     Reason: "
                      f"{self.failed.read_text() if self.failed.exists() else ''}",
            "inactive": "inactive (dead)",
        }[state]
        enabled = "enabled" if self.enabled.exists() else "disabled"
        print(f"● {self.name}.service - (null)\n     Loaded: loaded (/etc/init.d/{self.name}; {enabled})\n     "
              f"Active: {detail}")
        return 0 if state == "active" else 3


    def kill(self, signame: str) -> int:
        """``systemctl kill``: the signal to the unit's processes, nothing else (the unit is not stopped)."""
        pid = self.pid()
        if pid:
            os.kill(pid, getattr(signal, signame if signame.startswith("SIG") else "SIG" + signame))
        return 0


def systemctl(args: list[str]) -> int:
    now = "--now" in args  # enable --now also starts the unit, disable --now also stops it (systemctl(1))
    signame = next((a.split("=", 1)[1] for a in args if a.startswith("--signal=")), "SIGTERM")
    if "-s" in args:
        signame = args.pop(args.index("-s") + 1)
    args = [a for a in args if not a.startswith("-")]
    if len(args) < 2:
        return die("usage: systemctl start|stop|restart|kill|status|is-active|enable|disable|is-enabled UNIT")
    verb, names = args[0], args[1:]
    rc = 0
    for name in names:
        try:
            unit = Unit(name)
        except KeyError:
            return die(f"Failed to {verb} {name}: Unit {name} not found.", 5)
        if verb == "start":
            rc |= unit.start()
        elif verb == "stop":
            rc |= unit.stop()
        elif verb == "restart":
            rc |= unit.stop() or unit.start()
        elif verb == "kill":
            rc |= unit.kill(signame)
        elif verb == "status":
            rc |= unit.status()
        elif verb == "is-active":
            print(unit.state())
            rc |= 0 if unit.state() == "active" else 3
        elif verb == "enable":
            unit.enabled.touch()
            rc |= unit.start() if now and unit.state() != "active" else 0
        elif verb == "disable":
            unit.enabled.unlink(missing_ok=True)
            rc |= unit.stop() if now else 0
        elif verb == "is-enabled":
            print("enabled" if unit.enabled.exists() else "disabled")
            rc |= 0 if unit.enabled.exists() else 1
        else:
            return die(f"Unknown command verb {verb}.")
    return rc


# ----- kcn / kpn ---------------------------------------------------------------------------------------
def node_cli(binary: str, args: list[str]) -> int:
    if args[:1] == ["version"]:
        version = Path(f"/opt/kaia/{binary}.version").read_text().strip()
        print(f"{binary.capitalize()}\nVersion: {version}\nArchitecture: amd64\nProtocol Versions: [65 64 63 62]")
        return 0
    if args[:1] != ["attach"]:
        return die(f"{binary}: only 'version' and 'attach' are simulated")
    ipc, expr, rest = None, None, args[1:]
    while rest:
        arg = rest.pop(0)
        if arg == "--datadir":
            ipc = Path(rest.pop(0)) / "klay.ipc"
        elif arg.startswith("--datadir="):
            ipc = Path(arg.split("=", 1)[1]) / "klay.ipc"
        elif arg == "--exec":
            expr = rest.pop(0)
        elif not arg.startswith("-"):
            ipc = Path(arg.removeprefix("ipc:"))
    ipc = ipc or Path(f"/var/{binary}d/data/klay.ipc")
    if expr is None:
        return die("interactive console is not simulated: use --exec")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(ipc))
    except OSError as exc:
        return die(f"Fatal: Unable to attach to remote {binary}: dial unix {ipc}: connect: {exc.strerror.lower()}")
    with sock:
        sock.sendall(expr.encode() + b"\n")
        reply = json.loads(sock.makefile().readline())
    if "error" in reply:
        return die(reply["error"])
    print(console.render(reply["ok"]))
    return 0


# ----- ip / arping -------------------------------------------------------------------------------------
def ip_cmd(args: list[str]) -> int:
    args = [a for a in args if a not in ("-4", "-o", "-br")]
    host = os.environ["SIMCELL_HOST"]
    if args[:1] in (["addr"], ["address"], ["a"]) and len(args) >= 2 and args[1] in ("add", "del"):
        address = args[2]
        dev = args[args.index("dev") + 1] if "dev" in args else "eth0"
        reply = coord("/host/ip", {"host": host, "op": args[1], "ip": address.split("/")[0], "dev": dev})
        if reply.get("error"):
            return die(f"RTNETLINK answers: {reply['error']}", 2)
        return 0
    if args[:1] in (["addr"], ["address"], ["a"]):
        reply = coord("/host/ip", {"host": host, "op": "show"})
        for i, (dev, addrs) in enumerate(sorted(reply["devices"].items()), start=2):
            print(f"{i}: {dev}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP")
            for addr in addrs:
                print(f"    inet {addr}/24 scope global {dev}")
        return 0
    if args[:1] == ["route"]:
        reply = coord("/host/ip", {"host": host, "op": "route", "args": args[1:]})
        if reply.get("error"):
            return die(f"Error: {reply['error']}", 2)
        return 0
    return die(f"ip: simulated subcommands are addr add|del|show and route, not {' '.join(args)}")


def arping(args: list[str]) -> int:
    """iputils arping: ``arping -U|-A -c N -I DEV IP`` announces that this host now has IP;
    ``arping -D ... IP`` (duplicate address detection) exits 0 when no other host answers for IP, 1 when one does."""
    address = [a for a in args if a.count(".") == 3][-1]
    dev = args[args.index("-I") + 1] if "-I" in args else "eth0"
    if "-D" in args:
        reply = coord("/host/ip", {"host": os.environ["SIMCELL_HOST"], "op": "dad", "ip": address})
        answered = reply.get("answered_by", [])
        print(f"ARPING {address} from 0.0.0.0 {dev}")
        for _ in answered:
            print(f"Unicast reply from {address} [52:54:00:00:00:01]  0.612ms")
        print(f"Sent 1 probes (1 broadcast(s))\nReceived {len(answered)} response(s)")
        return 1 if answered else 0
    if not ({"-U", "-A"} & set(args)):
        return die("arping: only unsolicited (gratuitous) ARP (-U, -A) and duplicate address detection (-D) are "
                   "simulated")
    reply = coord("/host/ip", {"host": os.environ["SIMCELL_HOST"], "op": "arp", "ip": address})
    if reply.get("error"):
        return die(f"arping: {reply['error']}", 2)
    print(f"ARPING {address}\nSent 3 probes (3 broadcast(s))\nReceived 0 response(s)")
    return 0


# ----- mount -------------------------------------------------------------------------------------------
def mount(args: list[str]) -> int:
    bind = "--bind" in args
    args = [a for a in args if not a.startswith("-")]
    host = os.environ["SIMCELL_HOST"]
    if bind and args and args[0] == "/":
        # `mount --bind / DIR` (not --rbind): the root file system alone, without what is mounted on it, so
        # what a mount point hides on the root disk shows. The host's root disk is its own root directory.
        Path(args[1]).mkdir(parents=True, exist_ok=True)
        hostshell.bind_one(paths.host_root(host), Path(args[1]))
        return 0
    if not args:
        for mountpoint, volume in coord("/host/mount", {"host": host, "op": "list"})["mounts"].items():
            print(f"{volume} on {mountpoint} type ext4 (rw,relatime)")
        return 0
    device, mountpoint = args[0], args[1]
    reply = coord("/host/mount", {"host": host, "op": "mount", "device": device, "mountpoint": mountpoint})
    if reply.get("error"):
        return die(f"mount: {mountpoint}: {reply['error']}", 32)
    hostshell.bind(Path(reply["volume_dir"]), Path(mountpoint))
    return 0


def umount(args: list[str]) -> int:
    mountpoint = [a for a in args if not a.startswith("-")][0]
    reply = coord("/host/mount", {"host": os.environ["SIMCELL_HOST"], "op": "umount", "mountpoint": mountpoint})
    if (reply.get("error")
            and subprocess.run(["/usr/bin/umount", "-l", mountpoint], capture_output=True).returncode == 0):
        return 0  # a bind mount (not a volume the coordinator knows)
    if reply.get("error"):
        return die(f"umount: {mountpoint}: {reply['error']}", 32)
    subprocess.run(["/usr/bin/umount", "-l", mountpoint], check=False)
    return 0


def main() -> int:
    tool, args = sys.argv[1], sys.argv[2:]
    if tool == "systemctl":
        return systemctl(args)
    if tool in ("kcn", "kpn"):
        return node_cli(tool, args)
    return {"ip": ip_cmd, "arping": arping, "mount": mount, "umount": umount}[tool](args)


if __name__ == "__main__":
    sys.exit(main())
