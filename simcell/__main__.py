"""``python -m simcell up|down|status|break|fault``: drive the simulated core cell.

Tests, ``make demo`` and operators rehearsing a failover all use this same command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from simcell import paths


def runtime() -> dict | None:
    try:
        info = json.loads(paths.RUNTIME_FILE.read_text())
        os.kill(info["pid"], 0)
        return info
    except (OSError, ValueError, KeyError):
        return None


def call(path: str, payload: dict | None = None) -> dict:
    info = runtime()
    if info is None:
        sys.exit("simcell: the simulated core cell is not running (start it with `python -m simcell up`)")
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(info["coord_url"] + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        sys.exit(f"simcell: {json.loads(exc.read()).get('error', exc)}")


def leftovers() -> list[int]:
    """Processes of this cell (supervisor, sshd, nodes), marked in their environment at spawn."""
    marker = f"SIMCELL_OWNER={paths.STATE}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def up(args) -> int:
    if runtime():
        print("simcell: already up; `. .simcell/env` to use it")
        return 0
    down(None, quiet=True)
    for stale in (paths.HOSTS, paths.VOLUMES.parent, paths.IMAGES, paths.CALL_LOG, paths.ENV_FILE, paths.INVENTORY,
                  paths.SSH_FAULTS_FLAG):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    paths.STATE.mkdir(parents=True, exist_ok=True)
    cmd = [paths.PYTHON, "-m", "simcell.supervisor", "--profile", args.profile, "--time-scale", str(args.time_scale),
           "--cloud-cells", str(args.cloud_cells)]
    env = dict(os.environ, SIMCELL_DIR=str(paths.STATE), SIMCELL_OWNER=str(paths.STATE), PYTHONPATH=str(paths.REPO))
    proc = subprocess.Popen(
        cmd, env=env, cwd=paths.REPO, start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=open(paths.STATE / "supervisor.out", "ab"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = paths.SUPERVISOR_LOG.read_text()[-3000:] if paths.SUPERVISOR_LOG.exists() else ""
            sys.stderr.write(f"simcell: failed to start (exit {proc.returncode}); {paths.SUPERVISOR_LOG}:\n{tail}\n")
            return 1
        if runtime():
            print(f"simcell: up ({args.profile} profile, time scale {args.time_scale}); now run `. {paths.ENV_FILE}`")
            return 0
        time.sleep(0.2)
    sys.stderr.write(f"simcell: not up after {args.timeout}s; see {paths.SUPERVISOR_LOG}\n")
    proc.terminate()
    return 1


def down(args, quiet: bool = False) -> int:
    info = runtime()
    if info:
        try:
            call("/control/shutdown", {})
        except SystemExit:
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and runtime():
            time.sleep(0.2)
        if runtime():
            os.kill(info["pid"], signal.SIGKILL)
    for pid in leftovers():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    paths.RUNTIME_FILE.unlink(missing_ok=True)
    if not quiet:
        print("simcell: down")
    return 0


def status(args) -> int:
    print(json.dumps(call("/status"), indent=2))
    return 0


def break_(args) -> int:
    print(json.dumps(call("/control/break", {"node": args.node, "how": args.how})))
    return 0


def power_on(args) -> int:
    print(json.dumps(call("/control/power-on", {"node": args.node})))
    return 0


def latency(args) -> int:
    print(json.dumps(call("/control/latency", {"profile": args.profile, "time_scale": args.time_scale})))
    return 0


def fault(args) -> int:
    if args.clear:
        payload = {"clear": True}
    elif not args.action or not (args.kind or args.action.startswith(("slow-stop:", "stuck-stop:", "isolate:"))):
        sys.exit("simcell fault: give ACTION and --kind (or --clear)")
    else:
        payload = {"action": args.action, "kind": args.kind, "times": args.times, "match": args.match}
    print(json.dumps(call("/control/fault", payload)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simcell", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="start the cell in the background and write .simcell/env")
    p.add_argument("--profile", choices=("instant", "aws"), default=os.environ.get("SIMCELL_PROFILE", "instant"))
    p.add_argument("--time-scale", type=float, default=float(os.environ.get("SIMCELL_TIME_SCALE", "1")),
                   help="multiplies the aws profile's durations (0.01: a 40 s launch takes 0.4 s)")
    p.add_argument("--cloud-cells", type=int, default=int(os.environ.get("SIMCELL_CLOUD_CELLS", "1")),
                   help="copies of the cloud core cell cc-cloud (cc-cloud-2 ...), each a CN and 2 PNs; for benchmarks "
                        "at scale")
    p.add_argument("--timeout", type=float, default=180)
    p.set_defaults(func=up)
    sub.add_parser("down", help="stop everything the cell started").set_defaults(func=down)
    sub.add_parser("status", help="the simulated world as JSON").set_defaults(func=status)
    p = sub.add_parser("break", help="break a node on purpose")
    p.add_argument("node")
    p.add_argument("--how", required=True, choices=("kill", "stop-instance", "cut-ssh"))
    p.set_defaults(func=break_)
    p = sub.add_parser("power-on", help="a bare-metal host that was powered off boots again (its enabled services "
                                        "start)")
    p.add_argument("node")
    p.set_defaults(func=power_on)
    p = sub.add_parser("latency", help="switch the AWS latency profile for transitions that begin from now on")
    p.add_argument("--profile", choices=("instant", "aws"), required=True)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.set_defaults(func=latency)
    p = sub.add_parser(
        "fault",
        help="make the next N calls of an AWS action fail (ACTION may also be ssh:NODE with --kind drop|drop-after "
             "[--match TEXT], slow-stop:NODE with --times SECONDS, stuck-stop:NODE (its next EC2 stop hangs until "
             "Force), or isolate:CELL: the other operators' CNs refuse that cell's validator until --clear)",
    )
    p.add_argument("action", nargs="?")
    p.add_argument("--kind", choices=("throttle", "server-error", "drop", "drop-after"))
    p.add_argument("--match", help="ssh faults: only sessions whose command contains TEXT")
    p.add_argument("--times", type=int, default=1)
    p.add_argument("--clear", action="store_true")
    p.set_defaults(func=fault)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
