"""The cell's HTTP API on loopback: node heartbeats, host tools, and the operator's controls.

Routes: ``POST /node/heartbeat``, ``GET /ssh/fault``, ``POST /host/ip``, ``POST /host/mount`` (from the
hosts); ``GET /status``, ``POST /control/break``, ``POST /control/fault``, ``POST /control/shutdown``
(from ``python -m simcell``).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from simcell.world import ANY_HOST

log = logging.getLogger(__name__)

BREAK_HOW = ("kill", "stop-instance", "cut-ssh")
FAULT_KINDS = ("throttle", "server-error", "drop")
SSH_FAULT_KINDS = ("drop", "drop-after")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Every node heartbeats 4 times a second (63 nodes at 20 cells: ~250 connections a second); socketserver's
    # listen backlog of 5 resets connections in a burst, which the nodes would read as a lost network.
    request_queue_size = 1024


class ControlError(Exception):
    pass


class Coordinator:
    def __init__(self, world, front, stop_instance, on_shutdown):
        self.world = world
        self.front = front
        self.stop_instance = stop_instance  # EC2 StopInstances through the front layer
        self.on_shutdown = on_shutdown
        self.server = _Server(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="coordinator", daemon=True).start()

    # ----- controls ------------------------------------------------------------------------------------
    def find_host(self, node: str):
        for host in self.world.hosts.values():
            if node in (host.name, host.label, host.instance_id):
                return host
        raise ControlError(f"no node named {node!r}; known: "
                           f"{sorted(h.label or h.name for h in self.world.hosts.values())}")

    def do_break(self, node: str, how: str) -> dict:
        if how not in BREAK_HOW:
            raise ControlError(f"--how must be one of {', '.join(BREAK_HOW)}, got {how!r}")
        host = self.find_host(node)
        if how == "kill":
            service = "kpnd" if host.role == "pn" else "kcnd"
            if not self.world.kill_node(host.name, service):
                raise ControlError(f"{node}: {service} is not running")
        elif how == "stop-instance":
            if host.instance_id:
                self.stop_instance(host.instance_id)
            else:  # bare metal: the power goes
                self.world.shutdown(host.name, graceful=False)
        else:
            self.world.cut_ssh(host.name)
        return {"broken": host.label or host.name, "how": how}

    def do_power_on(self, node: str) -> dict:
        """A bare-metal host comes back (someone pressed the button, the BMC, a power restore): it boots its own
        configuration (services enabled at boot start). EC2 instances are started with StartInstances instead."""
        host = self.find_host(node)
        if host.instance_id:
            raise ControlError(f"{node} is an EC2 instance: start it with StartInstances")
        if host.up:
            raise ControlError(f"{node} is up already")
        self.world.boot(host.name)
        return {"powered_on": host.label or host.name}

    def do_latency(self, req: dict) -> dict:
        try:
            self.front.set_latency(req["profile"], float(req["time_scale"]))
        except (KeyError, ValueError) as exc:
            raise ControlError(f"latency: {exc}") from None
        return {"profile": req["profile"], "time_scale": float(req["time_scale"])}

    def do_fault(self, req: dict) -> dict:
        if req.get("clear"):
            self.front.clear_faults()
            self.world.clear_ssh_faults()
            self.world.stop_seconds.clear()
            self.world.isolated.clear()
            return {"cleared": True}
        action, kind, times = req["action"], req["kind"], int(req.get("times", 1))
        if action.startswith("ssh:"):
            # ssh:<node>: the next N SSH sessions to that host (whose command contains `match`, if given)
            # drop before their command runs (drop) or after it ran, before its exit status (drop-after).
            if kind not in SSH_FAULT_KINDS:
                raise ControlError(f"SSH faults take --kind {' or '.join(SSH_FAULT_KINDS)}")
            if action[4:] == ANY_HOST and not req.get("match"):
                raise ControlError("ssh:* faults need --match (a command of the host meant, e.g. of an instance not "
                                   "launched yet)")
            host = ANY_HOST if action[4:] == ANY_HOST else self.find_host(action[4:]).name
            fault = {"kind": kind, "match": req.get("match") or None}
            self.world.add_ssh_faults(host, [dict(fault) for _ in range(times)])
        elif action.startswith("stuck-stop:"):
            # stuck-stop:<instance or node>: its next stop hangs in `stopping` until a StopInstances with Force.
            host = self.find_host(action[11:])
            if not host.instance_id:
                raise ControlError(f"{action[11:]} is not an EC2 instance")
            self.front.add_stuck_stop(host.instance_id)
        elif action.startswith("isolate:"):
            # isolate:<cell>: the other operators' CNs refuse the cell's validator (their allowlists lost its IP, say);
            # its PNs still serve it blocks, so it syncs but is not in consensus. Until --clear.
            cell = action[8:]
            if cell not in self.world.validators:
                raise ControlError(f"no core cell named {cell!r}; known: {sorted(self.world.validators)}")
            self.world.isolated.add(cell)
        elif action.startswith("slow-stop:"):
            # slow-stop:<node>: the node needs `times` seconds to stop (past STOP_TIMEOUT it is killed).
            host = self.find_host(action[10:])
            self.world.stop_seconds[host.name] = float(times)
        else:
            if kind not in FAULT_KINDS:
                raise ControlError(f"--kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
            self.front.add_fault(action, kind, times)
        return {"fault": action, "kind": kind, "times": times} | ({"match": req["match"]} if req.get("match") else {})

    def status(self) -> dict:
        status = self.world.status()
        status["pending_faults"] = {
            "aws": self.front.pending_faults(),
            "ssh": {k: len(v) for k, v in self.world.ssh_faults.items() if v},
            "ssh_detail": {k: [f"{f['kind']} {f['match'] or '(any command)'}" for f in v]
                           for k, v in self.world.ssh_faults.items() if v},
            "slow_stop": dict(self.world.stop_seconds),
        }
        return status

    # ----- HTTP ----------------------------------------------------------------------------------------
    def _handler(self):
        coordinator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # keep the supervisor log for what matters
                pass

            def _reply(self, code: int, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/status":
                    return self._reply(200, coordinator.status())
                if url.path == "/ssh/fault":
                    kind = coordinator.world.take_ssh_fault(query.get("host", ""), query.get("command", ""))
                    return self._reply(200, {"kind": kind})
                return self._reply(404, {"error": f"no route {url.path}"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(length) or b"{}")
                world = coordinator.world
                routes = {
                    "/node/heartbeat": world.heartbeat,
                    "/host/ip": world.ip_op,
                    "/host/mount": world.mount_op,
                    "/control/break": lambda r: coordinator.do_break(r["node"], r["how"]),
                    "/control/power-on": lambda r: coordinator.do_power_on(r["node"]),
                    "/control/fault": coordinator.do_fault,
                    "/control/latency": coordinator.do_latency,
                    "/control/shutdown": lambda r: coordinator.on_shutdown() or {"stopping": True},
                }
                route = routes.get(self.path)
                if route is None:
                    return self._reply(404, {"error": f"no route {self.path}"})
                try:
                    return self._reply(200, route(req))
                except ControlError as exc:
                    return self._reply(400, {"error": str(exc)})
                except Exception as exc:
                    log.exception("%s failed", self.path)
                    return self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

        return Handler
