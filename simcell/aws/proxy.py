"""AWS front layer of the simulated core cell.

boto3 talks to this HTTP proxy (``AWS_ENDPOINT_URL``). It forwards every request, headers and body
intact, to a moto server it runs itself, and adds what moto does not model:

- a JSON-lines call log of every request (secret values masked, response bodies never logged);
- faults injected per action: throttling, server errors, and a dropped connection after the call
  was performed (what idempotency has to survive);
- EC2 ``ClientToken`` idempotency for RunInstances and CreateVolume;
- AWS defaults and checks moto skips (``AllowReassociation``, AttachVolume zone and state, volume
  size against its snapshot, unique AMI names, snapshots in use by an image ...);
- states that take time (``pending``, ``creating``, ``stopping`` ...; durations in ``latency``),
  shown by rewriting moto's XML answers;
- CreateImage block device mappings (moto ignores them), told truthfully by DescribeImages;
- what disk, instance and address actions mean for the simulated world, through ``WorldHooks``.

DryRun requests go to moto as they are: no fault, no check, no hook, no state.

moto keeps its state in process-wide globals, so ``start()`` resets it: one AwsFront per process.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import logging
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from xml.sax.saxutils import escape

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from .hooks import WorldHooks
from .latency import STUCK_S, Latency

logger = logging.getLogger(__name__)

SECRET_PARAMS = frozenset({"SecretString", "SecretBinary"})
FAULT_KINDS = ("throttle", "server-error", "drop")
IDEMPOTENT_ACTIONS = frozenset({"RunInstances", "CreateVolume"})
INSTANCE_STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}

# Per-connection headers: the proxy speaks its own connection to each side.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
     "expect", "content-length"}
)
# BaseHTTPRequestHandler.send_response writes its own.
_OWN_RESPONSE_HEADERS = _HOP_BY_HOP | {"server", "date"}
_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
_MAPPING_RE = re.compile(r"BlockDeviceMapping\.(\d+)\.(.+)")
# Loading EC2's service model takes ~0.3 s: every front shares one session.
_SESSION = boto3.session.Session()
_SESSION_LOCK = threading.Lock()


class _ApiError(Exception):
    """An AWS error the front layer answers itself."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    service: str
    region: str
    access_key: str
    action: str
    params: dict[str, Any]  # form fields (query protocols) or the JSON body
    json_protocol: bool

    @property
    def dry_run(self) -> bool:
        return not self.json_protocol and str(self.params.get("DryRun", "")).lower() == "true"

    def flag(self, name: str) -> bool:
        return str(self.params.get(name, "")).lower() == "true"

    def without_tag_specifications(self, resource_type: str) -> tuple[_Request, list[dict[str, str]]]:
        """Drop the ``TagSpecification.N`` for ``resource_type``; return the request and those tags."""
        groups: dict[str, dict[str, str]] = {}
        for key, value in self.params.items():
            if m := re.fullmatch(r"TagSpecification\.(\d+)\.(.+)", key):
                groups.setdefault(m[1], {})[m[2]] = value
        drop = {n for n, g in groups.items() if g.get("ResourceType") == resource_type}
        tags = [
            {"Key": g[f"Tag.{i}.Key"], "Value": g.get(f"Tag.{i}.Value", "")}
            for n in sorted(drop) for g in [groups[n]]
            for i in sorted({int(k.split(".")[1]) for k in g if k.startswith("Tag.")})
        ]
        params = {k: v for k, v in self.params.items()
                  if not (m := re.fullmatch(r"TagSpecification\.(\d+)\..+", k)) or m[1] not in drop}
        return replace(self, params=params, body=urlencode(params).encode()), tags

    def with_param(self, name: str, value: str) -> _Request:
        params = {**self.params, name: value}
        return replace(self, params=params, body=urlencode(params).encode())

    def list_param(self, name: str) -> list[str]:
        """``Name.1``, ``Name.2`` ... in order."""
        pattern = re.compile(re.escape(name) + r"\.(\d+)")
        found = [(int(m[1]), v) for k, v in self.params.items() if (m := pattern.fullmatch(k))]
        return [v for _, v in sorted(found)]

    def mappings(self) -> dict[str, dict[str, str]]:
        """``BlockDeviceMapping.N.*`` fields by device name."""
        groups: dict[str, dict[str, str]] = {}
        for key, value in self.params.items():
            if m := _MAPPING_RE.fullmatch(key):
                groups.setdefault(m[1], {})[m[2]] = value
        return {g["DeviceName"]: g for g in groups.values() if "DeviceName" in g}


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(eq=False)
class _Phase:
    """A transitional state shown instead of moto's (already final) one until ``end``."""

    state: str
    start: float
    end: float
    on_end: Callable[[], None] | None

    def progress(self) -> int:
        span = self.end - self.start
        return min(99, int(100 * (time.monotonic() - self.start) / span))


@dataclass(frozen=True)
class _Carried:
    """A data volume an image carries."""

    volume_id: str
    snapshot_id: str
    size: int
    volume_type: str
    delete_on_termination: bool


@dataclass(frozen=True)
class _Image:
    name: str
    root_device: str
    root_snapshot: str | None
    devices: dict[str, _Carried]

    def device_of(self, snapshot_id: str) -> str | None:
        if snapshot_id == self.root_snapshot:
            return self.root_device
        return next((d for d, c in self.devices.items() if c.snapshot_id == snapshot_id), None)


# --- XML helpers (moto answers EC2 in the 2016-11-15 namespace; botocore reads local names) -------

def _path(path: str) -> str:
    return "/".join(f"{{*}}{part}" for part in path.split("/"))


def _text(elem: ET.Element, path: str) -> str | None:
    found = elem.find(_path(path))
    return None if found is None else found.text


def _set_text(elem: ET.Element, path: str, value: str) -> None:
    found = elem.find(_path(path))
    if found is not None:
        found.text = value


def _namespace(root: ET.Element) -> str:
    return root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    ns = _namespace(parent)
    elem = ET.SubElement(parent, f"{{{ns}}}{tag}" if ns else tag)
    elem.text = text
    return elem


def _xml(reply: _Reply) -> ET.Element:
    return ET.fromstring(reply.body)


def _rewritten(reply: _Reply, root: ET.Element) -> _Reply:
    """``reply`` with ``root`` as its body, the namespace kept as the default one (no prefixes)."""
    body = ET.tostring(root, encoding="unicode", default_namespace=_namespace(root) or None)
    return _Reply(reply.status, reply.headers, b'<?xml version="1.0" encoding="UTF-8"?>\n' + body.encode())


def _set_instance_state(state_elem: ET.Element | None, name: str) -> None:
    if state_elem is not None:
        _set_text(state_elem, "name", name)
        _set_text(state_elem, "code", str(INSTANCE_STATE_CODES[name]))


# --- error answers ------------------------------------------------------------------------------------

def _error_reply(req: _Request, status: int, code: str, message: str) -> _Reply:
    """An error in the shape botocore expects from the request's service."""
    request_id = str(uuid.uuid4())
    if req.json_protocol:
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", request_id)]
        return _Reply(status, headers, body)
    code_x, message_x = escape(code), escape(message)
    if req.service == "ec2":
        xml = (f"<Response><Errors><Error><Code>{code_x}</Code><Message>{message_x}</Message></Error>"
               f"</Errors><RequestID>{request_id}</RequestID></Response>")
    else:
        kind = "Sender" if status < 500 else "Receiver"
        xml = (f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code_x}</Code><Message>{message_x}</Message>"
               f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>")
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode()
    return _Reply(status, [("Content-Type", "text/xml")], body)


def _fault_reply(req: _Request, kind: str) -> _Reply:
    """Errors botocore retries: throttling codes, and 5xx (any 500/503 is retried)."""
    if kind == "throttle":
        if req.service == "ec2":
            return _error_reply(req, 400, "RequestLimitExceeded", "Request limit exceeded.")
        code = "ThrottlingException" if req.json_protocol else "Throttling"
        return _error_reply(req, 400, code, "Rate exceeded")
    if req.service == "ec2":
        return _error_reply(req, 503, "Unavailable", "The server is overloaded and can't handle the request.")
    code = "InternalServiceError" if req.json_protocol else "InternalError"
    return _error_reply(req, 500, code, "An internal error occurred.")


def _s3_action(method: str, path: str) -> str:
    """S3's REST calls carry no Action: name each by the IAM action that allows it (the call log and the IAM test)."""
    parts = urlsplit(path)
    has_key = "/" in parts.path.strip("/")
    if method in ("GET", "HEAD"):
        return "GetObject" if has_key else "ListBucket"
    if method == "PUT":
        return "PutObject" if has_key else "CreateBucket"
    return "DeleteObject" if method == "DELETE" else f"{method}Object"


def _error_code(reply: _Reply) -> str | None:
    if reply.status < 400:
        return None
    try:
        body = json.loads(reply.body)
    except ValueError:
        m = re.search(rb"<Code>([^<]+)</Code>", reply.body)
        return m[1].decode() if m else None
    if not isinstance(body, dict) or not body.get("__type"):
        return None
    return str(body["__type"]).rpartition("#")[2]  # "namespace#Code" in some services


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if k in SECRET_PARAMS else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # socketserver's 5 resets connections when many cells' steps call at once
    front: AwsFront

    def handle_error(self, request: Any, client_address: Any) -> None:
        # e.g. a client that went away mid-answer; socketserver would print to stderr.
        logger.warning("AWS front: error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects
    timeout = 300  # idle keep-alive connections are closed
    # Headers and body go out in two writes: without TCP_NODELAY each answer waits ~40 ms for the
    # client's delayed ACK.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        self.server.front._serve(self)  # type: ignore[attr-defined]

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.client_address[0], *args)


class AwsFront:
    """The AWS endpoint of the simulated core cell (see the module docstring)."""

    def __init__(
        self,
        *,
        hooks: WorldHooks,
        call_log_path: Path,
        profile: str = "instant",
        time_scale: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        moto_port: int = 0,
    ) -> None:
        self._hooks = hooks
        self._call_log_path = Path(call_log_path)
        self._latency = Latency(profile, time_scale)
        self._host, self._port, self._moto_port = host, port, moto_port
        self._lock = threading.Lock()  # all bookkeeping below
        # moto checks S3's If-None-Match and then writes, unlocked: two racing create-only writes could both win. S3
        # itself makes the pair atomic, so the front serialises S3 writes.
        self._s3_write_lock = threading.Lock()
        self._stuck_stops: set[str] = set()  # instances whose next stop hangs until a stop with Force
        self._timer_wakeup = threading.Condition(self._lock)
        self._log_lock = threading.Lock()
        self._image_lock = threading.Lock()  # name check + creation of one image at a time
        self._faults: dict[str, deque[str]] = {}
        self._tokens: dict[tuple[str, ...], tuple[str, _Reply]] = {}
        self._token_locks: dict[tuple[str, ...], threading.Lock] = {}
        self._phases: dict[str, _Phase] = {}
        self._completed: dict[str, str] = {}  # snapshot id -> when it completed (moto gives no completionTime)
        self._timeline: list[tuple[float, int, str, _Phase]] = []
        self._sequence = itertools.count()
        self._images: dict[str, _Image] = {}
        self._clients: dict[tuple[str, str], Any] = {}
        self._stopping = False
        self._moto: ThreadedMotoServer | None = None
        self._moto_address: tuple[str, int] = ("127.0.0.1", 0)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start moto (from an empty state), the proxy server and the timer."""
        werkzeug_log = logging.getLogger("werkzeug")
        if werkzeug_log.level == logging.NOTSET:
            # moto's server logs every request at INFO on stderr; the call log already has them.
            werkzeug_log.setLevel(logging.WARNING)
        self._call_log_path.parent.mkdir(parents=True, exist_ok=True)
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self._moto_port, verbose=False)
        self._moto.start()
        self._moto_address = self._moto.get_host_and_port()
        conn = HTTPConnection(*self._moto_address, timeout=30)
        try:
            conn.request("POST", "/moto-api/reset")
            conn.getresponse().read()
        finally:
            conn.close()
        self._server = _Server((self._host, self._port), _Handler)
        self._server.front = self
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="aws-front", daemon=True),
            threading.Thread(target=self._run_timer, name="aws-front-timer", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        logger.info("AWS front on %s (moto on %s:%s)", self.endpoint_url, *self._moto_address)

    def stop(self) -> None:
        with self._timer_wakeup:
            self._stopping = True
            self._timer_wakeup.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._moto is not None:
            self._moto.stop()
        for thread in self._threads:
            thread.join(timeout=10)

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("AwsFront is not started")
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"http://{host}:{self._server.server_address[1]}"

    # --- faults ----------------------------------------------------------------------------------------

    def add_fault(self, action: str, kind: str, times: int) -> None:
        """Make the next ``times`` calls of ``action`` fail with ``kind`` (after faults already queued)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}, expected one of {FAULT_KINDS}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.setdefault(action, deque()).extend([kind] * times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> dict:
        """``{action: [kind, ...]}`` in the order they will be used."""
        with self._lock:
            return {action: list(kinds) for action, kinds in self._faults.items()}

    def _take_fault(self, action: str) -> str | None:
        with self._lock:
            kinds = self._faults.get(action)
            if not kinds:
                return None
            kind = kinds.popleft()
            if not kinds:
                del self._faults[action]
            return kind

    # --- request handling ------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        req = self._parse(handler)
        fault = None if req.dry_run else self._take_fault(req.action)
        try:
            if fault in ("throttle", "server-error"):
                reply = _fault_reply(req, fault)
            else:
                reply = self._dispatch(req)
        except Exception:
            logger.exception("%s %s failed in the AWS front", req.service, req.action)
            reply = _error_reply(req, 500, "InternalError", "The simulated AWS front failed.")
        self._log_call(req, reply, fault)
        if fault == "drop":
            # Performed, but the caller never hears of it.
            handler.close_connection = True
            return
        handler.send_response(reply.status)
        for name, value in reply.headers:
            handler.send_header(name, value)
        head = req.method == "HEAD"  # S3's HeadObject: the object's length, no body
        if not (head and any(name.lower() == "content-length" for name, _ in reply.headers)):
            handler.send_header("Content-Length", str(len(reply.body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(reply.body)

    def _parse(self, handler: BaseHTTPRequestHandler) -> _Request:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        m = _CREDENTIAL_RE.search(handler.headers.get("Authorization", ""))
        access_key, region, service = m.groups() if m else ("", "us-east-1", "unknown")
        target = handler.headers.get("X-Amz-Target")
        if target:
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                params = {}
            params = params if isinstance(params, dict) else {}
            action, json_protocol = target.rpartition(".")[2], True
        else:
            # keep_blank_values: NoDevice="" is meaningful
            params = dict(parse_qsl(urlsplit(handler.path).query, keep_blank_values=True))
            content_type = handler.headers.get("Content-Type") or "application/x-www-form-urlencoded"
            if "x-www-form-urlencoded" in content_type:
                params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            action, json_protocol = params.get("Action", ""), False
            if service == "s3":
                action = _s3_action(handler.command, handler.path)
        return _Request(
            method=handler.command,
            path=handler.path,
            headers=tuple(handler.headers.items()),
            body=body,
            service=service,
            region=region,
            access_key=access_key,
            action=action,
            params=params,
            json_protocol=json_protocol,
        )

    def _dispatch(self, req: _Request) -> _Reply:
        handler = self._EC2_HANDLERS.get(req.action) if req.service == "ec2" else None
        if req.service == "s3" and req.method in ("PUT", "POST", "DELETE"):
            with self._s3_write_lock:
                return self._forward(req)
        if handler is None or req.dry_run:
            return self._forward(req)
        try:
            if req.action in IDEMPOTENT_ACTIONS and req.params.get("ClientToken"):
                return self._idempotent(req, handler)
            return handler(self, req)
        except _ApiError as e:
            return _error_reply(req, e.status, e.code, e.message)

    def _forward(self, req: _Request) -> _Reply:
        conn = HTTPConnection(*self._moto_address, timeout=120)
        try:
            # The client's Host header goes through as it is.
            conn.putrequest(req.method, req.path, skip_host=True, skip_accept_encoding=True)
            for name, value in req.headers:
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(req.body)))
            conn.endheaders(req.body)
            resp = conn.getresponse()
            body = resp.read()
            own = _OWN_RESPONSE_HEADERS - {"content-length"} if req.method == "HEAD" else _OWN_RESPONSE_HEADERS
            headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in own]
            return _Reply(resp.status, headers, body)
        finally:
            conn.close()

    def _log_call(self, req: _Request, reply: _Reply, fault: str | None) -> None:
        if req.json_protocol:
            params = _mask(req.params)
        else:
            params = {
                k: "***" if k.rpartition(".")[2] in SECRET_PARAMS else v
                for k, v in req.params.items()
                if k not in ("Action", "Version")
            }
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "service": req.service,
            "region": req.region,
            "action": req.action or None,
            "params": params,
            "status": reply.status,
            "error": _error_code(reply),
            "fault": fault,
            "dry_run": req.dry_run,
        }
        if req.service == "s3":  # which object: the placement's, a report, a task log
            entry["path"] = req.path.split("?", 1)[0]
        line = json.dumps(entry, default=str) + "\n"
        with self._log_lock, self._call_log_path.open("a", encoding="utf-8") as log:
            log.write(line)

    def _idempotent(self, req: _Request, handler: Callable[[AwsFront, _Request], _Reply]) -> _Reply:
        """AWS ClientToken semantics, which moto ignores: a repeat answers the first success."""
        key = (req.access_key, req.region, req.action, str(req.params["ClientToken"]))
        fingerprint = json.dumps({k: v for k, v in req.params.items() if k != "ClientToken"}, sort_keys=True)
        with self._lock:
            token_lock = self._token_locks.setdefault(key, threading.Lock())
        with token_lock:  # a retry racing the first call waits for its outcome
            with self._lock:
                seen = self._tokens.get(key)
            if seen is not None:
                if seen[0] != fingerprint:
                    raise _ApiError(
                        "IdempotentParameterMismatch",
                        "Arguments on this idempotent request are inconsistent with arguments used in "
                        "previous request(s).",
                    )
                return seen[1]
            reply = handler(self, req)
            if reply.ok:
                with self._lock:
                    self._tokens[key] = (fingerprint, reply)
            return reply

    # --- hooks and timeline ----------------------------------------------------------------------------

    def _hook(self, name: str, *args: Any) -> Any:
        # A failing hook is a world bug: log it, the AWS side of the call has happened anyway.
        try:
            return getattr(self._hooks, name)(*args)
        except Exception:
            logger.exception("world hook %s%r failed", name, args)
            return None

    def set_latency(self, profile: str, time_scale: float) -> None:
        """Switch the latency profile for transitions that begin from now on (those under way keep theirs):
        benchmarks prepare a cell in ``instant`` and measure in ``aws``."""
        latency = Latency(profile, time_scale)
        with self._lock:
            self._latency = latency

    def _begin(
        self, resource_id: str, state: str, duration: float, on_end: Callable[[], None] | None = None
    ) -> None:
        """Show ``state`` for ``resource_id`` during ``duration``, then run ``on_end``."""
        if duration <= 0:
            with self._lock:
                self._phases.pop(resource_id, None)
            if on_end is not None:
                on_end()
            return
        now = time.monotonic()
        phase = _Phase(state, now, now + duration, on_end)
        with self._timer_wakeup:
            self._phases[resource_id] = phase  # replaces (and so cancels) an earlier phase
            heapq.heappush(self._timeline, (phase.end, next(self._sequence), resource_id, phase))
            self._timer_wakeup.notify()

    def _shown(self, resource_id: str | None) -> _Phase | None:
        with self._lock:
            return self._phases.get(resource_id or "")

    def _forget(self, resource_id: str) -> None:
        with self._lock:
            self._phases.pop(resource_id, None)

    def _run_timer(self) -> None:
        while True:
            with self._timer_wakeup:
                now = time.monotonic()
                while not self._stopping and (not self._timeline or self._timeline[0][0] > now):
                    self._timer_wakeup.wait(self._timeline[0][0] - now if self._timeline else None)
                    now = time.monotonic()
                if self._stopping:
                    return
                due = []
                while self._timeline and self._timeline[0][0] <= now:
                    _, _, resource_id, phase = heapq.heappop(self._timeline)
                    if self._phases.get(resource_id) is phase:  # not replaced meanwhile
                        due.append((resource_id, phase))
            for resource_id, phase in due:
                # The hook runs (outside the lock: it may take a while) before the final state shows,
                # so whoever sees "running" finds the host booted.
                if phase.on_end is not None:
                    phase.on_end()
                with self._lock:
                    if self._phases.get(resource_id) is phase:
                        del self._phases[resource_id]

    # --- moto look-ups ---------------------------------------------------------------------------------

    def _ec2(self, req: _Request) -> Any:
        """A boto3 EC2 client straight to moto, as the caller's account and region."""
        key = (req.region, req.access_key)
        with self._lock:
            client = self._clients.get(key)
        if client is not None:
            return client
        with _SESSION_LOCK:  # boto3 sessions are not thread-safe while making clients
            client = _SESSION.client(
                "ec2",
                region_name=req.region,
                endpoint_url="http://{}:{}".format(*self._moto_address),
                aws_access_key_id=req.access_key or "testing",
                aws_secret_access_key="testing",
                config=Config(retries={"total_max_attempts": 1}),
            )
        with self._lock:
            return self._clients.setdefault(key, client)

    def _volume(self, req: _Request, volume_id: str | None) -> dict | None:
        try:
            return self._ec2(req).describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        except (ClientError, IndexError):
            return None

    def _instance(self, req: _Request, instance_id: str | None) -> dict | None:
        try:
            reservations = self._ec2(req).describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError:
            return None
        return reservations[0]["Instances"][0] if reservations else None

    def _instance_state(self, req: _Request, instance_id: str) -> str | None:
        phase = self._shown(instance_id)
        if phase is not None:
            return phase.state
        instance = self._instance(req, instance_id)
        return None if instance is None else instance["State"]["Name"]

    def _address(self, req: _Request, **match: str | None) -> dict | None:
        wanted = {k: v for k, v in match.items() if v}
        for address in self._ec2(req).describe_addresses()["Addresses"]:
            if wanted and all(address.get(k) == v for k, v in wanted.items()):
                return address
        return None

    def _has_completed_snapshot(self, req: _Request, volume_id: str, exclude: str | None = None) -> bool:
        """Whether a new snapshot of the volume is incremental."""
        snapshots = self._ec2(req).describe_snapshots(Filters=[{"Name": "volume-id", "Values": [volume_id]}])
        return any(
            s["SnapshotId"] != exclude and s["State"] == "completed" and self._shown(s["SnapshotId"]) is None
            for s in snapshots["Snapshots"]
        )

    def _image_using(self, snapshot_id: str) -> tuple[str, str] | None:
        """``(image_id, device)`` of the registered image made with this snapshot."""
        with self._lock:
            for image_id, image in self._images.items():
                if (device := image.device_of(snapshot_id)) is not None:
                    return image_id, device
        return None

    def _origin(self, snapshot_id: str | None) -> str | None:
        """What a volume is made from, as the world knows it."""
        if not snapshot_id:
            return None
        using = self._image_using(snapshot_id)
        return f"image:{using[0]}:{using[1]}" if using else snapshot_id

    # --- EC2: instances --------------------------------------------------------------------------------

    def _run_instances(self, req: _Request) -> _Reply:
        image_id = req.params.get("ImageId")
        if (phase := self._shown(image_id)) is not None:  # the wording is ours
            raise _ApiError("InvalidAMIID.Unavailable",
                            f"The image '{image_id}' is not available, it is '{phase.state}'.")
        reply = self._forward(req)
        if not reply.ok:
            return reply
        for item in _xml(reply).iterfind(_path("instancesSet/item")):
            instance_id, image_id = _text(item, "instanceId"), _text(item, "imageId")
            self._hook("instance_launched", instance_id, image_id, _text(item, "privateIpAddress"))
            if req.params.get("UserData"):
                self._hook("instance_user_data", instance_id,
                           base64.b64decode(req.params["UserData"]).decode("utf-8", "replace"))
            self._launch_volumes(req, instance_id, image_id, _text(item, "placement/availabilityZone"))
            self._begin(
                instance_id, "pending", self._latency.instance_pending(),
                partial(self._hook, "instance_running", instance_id),
            )
        return reply

    def _launch_volumes(self, req: _Request, instance_id: str, image_id: str, zone: str) -> None:
        """Data volumes an instance gets at launch: the request's mappings (moto made them) and the
        image's data volumes (moto does not know them), less those the request maps ``NoDevice``."""
        image_devices = self._hook("image_data_volumes", image_id) or {}
        instance = self._instance(req, instance_id) or {}
        root_device = instance.get("RootDeviceName")
        made = {
            m["DeviceName"]: m["Ebs"]["VolumeId"]
            for m in instance.get("BlockDeviceMappings", [])
            if m["DeviceName"] != root_device and "Ebs" in m
        }
        for device, volume_id in made.items():
            volume = self._volume(req, volume_id) or {}
            from_image = device in image_devices
            origin = f"image:{image_id}:{device}" if from_image else self._origin(volume.get("SnapshotId"))
            self._hook("volume_created", volume_id, origin, volume.get("Size", 0))
            self._hook("volume_attached", volume_id, instance_id, device)
        with self._lock:
            image = self._images.get(image_id)
        no_device = {d for d, m in req.mappings().items() if "NoDevice" in m}
        client = self._ec2(req)
        for device, size in image_devices.items():
            if device in made or device in no_device:
                continue
            carried = image.devices.get(device) if image else None
            extra = {"SnapshotId": carried.snapshot_id} if carried else {}
            volume_id = client.create_volume(AvailabilityZone=zone, Size=size, **extra)["VolumeId"]
            client.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
            self._hook("volume_created", volume_id, f"image:{image_id}:{device}", size)
            self._hook("volume_attached", volume_id, instance_id, device)

    def _show_instance(self, item: ET.Element, state_path: str) -> None:
        phase = self._shown(_text(item, "instanceId"))
        if phase is not None:
            _set_instance_state(item.find(_path(state_path)), phase.state)

    def _stop_instances(self, req: _Request) -> _Reply:
        """moto stops at once and ignores SkipOsShutdown and Force: here the stop takes its time, a graceful one
        stops the services cleanly (the OS shutdown), SkipOsShutdown powers off (services die), and an instance
        with the ``stuck-stop`` fault stays ``stopping`` until a stop with Force."""
        skip = req.params.get("SkipOsShutdown", "false").lower() == "true"
        force = req.params.get("Force", "false").lower() == "true"
        stopping = {}
        for instance_id in req.list_param("InstanceId"):
            state = self._instance_state(req, instance_id)
            if state == "pending":
                raise _ApiError("IncorrectInstanceState",
                                f"The instance '{instance_id}' is not in a state from which it can be "
                                "stopped.")
            stopping[instance_id] = state == "stopping"
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        for item in root.iterfind(_path("instancesSet/item")):
            instance_id = _text(item, "instanceId")
            if _text(item, "previousState/name") == "running":
                self._hook("instance_stopping", instance_id, not skip)
                with self._lock:
                    stuck = instance_id in self._stuck_stops
                duration = STUCK_S if stuck and not force else self._latency.instance_stopping(skip or force)
                self._begin(instance_id, "stopping", duration)
            elif force and stopping.get(instance_id):
                with self._lock:
                    self._stuck_stops.discard(instance_id)
                forced = self._latency.instance_forced_stop()
                shown = self._shown(instance_id)
                # Force ends a stop that would take longer (a hung one); a repeated Force does not restart a
                # forced stop already under way (AWS: the stop goes on; a caller may repeat the request).
                if shown is None or shown.end - time.monotonic() > forced:
                    self._begin(instance_id, "stopping", forced)  # replaces the hung phase
            self._show_instance(item, "currentState")
        return _rewritten(reply, root)

    def add_stuck_stop(self, instance_id: str) -> None:
        with self._lock:
            self._stuck_stops.add(instance_id)

    def _start_instances(self, req: _Request) -> _Reply:
        for instance_id in req.list_param("InstanceId"):
            if self._instance_state(req, instance_id) in ("stopping", "shutting-down", "terminated"):
                raise _ApiError("IncorrectInstanceState",
                                f"The instance '{instance_id}' is not in a state from which it can be "
                                "started.")
            instance = self._instance(req, instance_id) or {}
            root = instance.get("RootDeviceName")
            if root and not any(m["DeviceName"] == root for m in instance.get("BlockDeviceMappings", [])):
                # An instance whose root volume was detached cannot boot (AWS refuses the start; moto does not).
                raise _ApiError("InvalidParameterValue",
                                f"Invalid value '{instance_id}' for instanceId. Instance does not have a volume "
                                f"attached at root ({root})")
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        for item in root.iterfind(_path("instancesSet/item")):
            instance_id = _text(item, "instanceId")
            if _text(item, "previousState/name") == "stopped":
                self._begin(
                    instance_id, "pending", self._latency.instance_pending(),
                    partial(self._hook, "instance_running", instance_id),
                )
            self._show_instance(item, "currentState")
        return _rewritten(reply, root)

    def _terminate_instances(self, req: _Request) -> _Reply:
        before: dict[str, tuple[str | None, list[tuple[str, str]]]] = {}
        for instance_id in req.list_param("InstanceId"):
            instance = self._instance(req, instance_id)
            if instance is None:
                continue
            root_device = instance.get("RootDeviceName")
            data = [(m["Ebs"]["VolumeId"], m["DeviceName"]) for m in instance.get("BlockDeviceMappings", [])
                    if m["DeviceName"] != root_device and "Ebs" in m]
            before[instance_id] = (self._instance_state(req, instance_id), data)
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        for item in root.iterfind(_path("instancesSet/item")):
            instance_id = _text(item, "instanceId")
            state, data_volumes = before.get(instance_id, (None, []))
            if state in ("terminated", "shutting-down"):
                continue
            if state in ("pending", "running"):
                self._hook("instance_stopping", instance_id)
            # moto detaches every volume at once and deletes those marked DeleteOnTermination.
            for volume_id, device in data_volumes:
                self._hook("volume_detached", volume_id, instance_id, device)
                if self._volume(req, volume_id) is None:
                    self._hook("volume_deleted", volume_id)
            self._begin(
                instance_id, "shutting-down", self._latency.instance_shutting_down(),
                partial(self._hook, "instance_terminated", instance_id),
            )
            self._show_instance(item, "currentState")
        return _rewritten(reply, root)

    def _describe_instances(self, req: _Request) -> _Reply:
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        for item in root.iterfind(_path("reservationSet/item/instancesSet/item")):
            self._show_instance(item, "instanceState")
        return _rewritten(reply, root)

    def _describe_instance_status(self, req: _Request) -> _Reply:
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        status_set = root.find(_path("instanceStatusSet"))
        for item in list(status_set if status_set is not None else []):
            phase = self._shown(_text(item, "instanceId"))
            if phase is None:
                continue
            if not req.flag("IncludeAllInstances"):  # AWS lists only running instances by default
                status_set.remove(item)
                continue
            _set_instance_state(item.find(_path("instanceState")), phase.state)
            checks = "initializing" if phase.state == "pending" else "not-applicable"
            for check in ("instanceStatus", "systemStatus"):
                for elem in item.iterfind(_path(f"{check}/status")):
                    elem.text = checks
                for elem in item.iterfind(_path(f"{check}/details/item/status")):
                    elem.text = checks
        return _rewritten(reply, root)

    def _get_console_output(self, req: _Request) -> _Reply:
        reply = self._forward(req)
        if not reply.ok:
            return reply
        text = self._hook("console_output", req.params.get("InstanceId"))
        if text is None:
            return reply
        root = _xml(reply)
        _set_text(root, "output", base64.b64encode(text.encode()).decode())
        return _rewritten(reply, root)

    # --- EC2: volumes and snapshots ----------------------------------------------------------------

    def _show_volume(self, item: ET.Element) -> None:
        phase = self._shown(_text(item, "volumeId"))
        if phase is not None:
            _set_text(item, "status", phase.state)

    def _show_snapshot(self, item: ET.Element) -> None:
        snapshot_id = _text(item, "snapshotId")
        phase = self._shown(snapshot_id)
        if phase is not None:
            _set_text(item, "status", phase.state)
            _set_text(item, "progress", f"{phase.progress()}%")
        elif (done := self._completed.get(snapshot_id or "")) and item.find(_path("completionTime")) is None:
            _sub(item, "completionTime", done)  # as AWS shows a completed snapshot

    def _snapshot_pending(self, snapshot_id: str, duration: float) -> None:
        def completed() -> None:
            self._completed[snapshot_id] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

        self._begin(snapshot_id, "pending", duration, completed)

    def _create_volume(self, req: _Request) -> _Reply:
        snapshot_id = req.params.get("SnapshotId")
        if snapshot_id:
            # AWS refuses a pending snapshot (velero-io/velero#1799); the wording is ours.
            if (phase := self._shown(snapshot_id)) is not None:
                raise _ApiError("IncorrectState",
                                f"Snapshot '{snapshot_id}' is not 'completed', it is '{phase.state}'.")
            size = req.params.get("Size")
            try:
                snapshot = self._ec2(req).describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
            except (ClientError, IndexError):
                snapshot = None  # moto reports it
            if size and snapshot and int(size) < snapshot["VolumeSize"]:
                raise _ApiError(
                    "InvalidParameterValue",
                    f"Volume of size {size}GB is smaller than snapshot '{snapshot_id}', "
                    f"expect size >= {snapshot['VolumeSize']}GB",
                )
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        volume_id = _text(root, "volumeId")
        self._hook("volume_created", volume_id, self._origin(snapshot_id), int(_text(root, "size") or 0))
        self._begin(volume_id, "creating", self._latency.volume_creating())
        self._show_volume(root)
        return _rewritten(reply, root)

    def _attach_volume(self, req: _Request) -> _Reply:
        volume_id, instance_id = req.params.get("VolumeId"), req.params.get("InstanceId")
        volume, instance = self._volume(req, volume_id), self._instance(req, instance_id)
        if volume is None or instance is None:
            return self._forward(req)  # moto reports what does not exist
        if self._instance_state(req, instance_id) in ("shutting-down", "terminated"):
            raise _ApiError("IncorrectInstanceState",
                            f"Instance '{instance_id}' is not 'running' or 'stopped'.")
        if volume["AvailabilityZone"] != instance["Placement"]["AvailabilityZone"]:
            raise _ApiError(
                "InvalidVolume.ZoneMismatch",
                f"The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'",
            )
        if (phase := self._shown(volume_id)) is not None:
            raise _ApiError("IncorrectState",
                            f"The volume '{volume_id}' is not 'available', it is '{phase.state}'.")
        if volume["Attachments"]:
            raise _ApiError("VolumeInUse", f"{volume_id} is already attached to an instance")
        reply = self._forward(req)
        if reply.ok:
            self._hook("volume_attached", volume_id, instance_id, req.params.get("Device"))
        return reply

    def _detach_volume(self, req: _Request) -> _Reply:
        volume_id = req.params.get("VolumeId")
        volume = self._volume(req, volume_id)
        attachment = volume["Attachments"][0] if volume and volume["Attachments"] else None
        if attachment and "InstanceId" not in req.params:
            # Optional for AWS; moto fails (HTTP 500) without it.
            req = req.with_param("InstanceId", attachment["InstanceId"])
        reply = self._forward(req)
        if reply.ok and attachment:
            self._hook("volume_detached", volume_id, attachment["InstanceId"], attachment["Device"])
        return reply

    def _delete_volume(self, req: _Request) -> _Reply:
        reply = self._forward(req)  # moto refuses an attached volume (VolumeInUse)
        if reply.ok:
            volume_id = req.params.get("VolumeId")
            self._forget(volume_id)
            self._hook("volume_deleted", volume_id)
        return reply

    def _describe_volumes(self, req: _Request) -> _Reply:
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        for item in root.iterfind(_path("volumeSet/item")):
            self._show_volume(item)
        return _rewritten(reply, root)

    def _create_snapshot(self, req: _Request) -> _Reply:
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        snapshot_id, volume_id = _text(root, "snapshotId"), _text(root, "volumeId")
        self._hook("snapshot_created", snapshot_id, volume_id)  # point in time: now
        incremental = self._has_completed_snapshot(req, volume_id, exclude=snapshot_id)
        size = int(_text(root, "volumeSize") or 0)
        self._snapshot_pending(snapshot_id, self._latency.snapshot(size, incremental))
        self._show_snapshot(root)
        return _rewritten(reply, root)

    def _delete_snapshot(self, req: _Request) -> _Reply:
        snapshot_id = req.params.get("SnapshotId")
        if (using := self._image_using(snapshot_id)) is not None:
            raise _ApiError("InvalidSnapshot.InUse",
                            f"The snapshot {snapshot_id} is currently in use by {using[0]}")
        reply = self._forward(req)
        if reply.ok:
            self._forget(snapshot_id)
            self._hook("snapshot_deleted", snapshot_id)
        return reply

    def _describe_snapshots(self, req: _Request) -> _Reply:
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        for item in root.iterfind(_path("snapshotSet/item")):
            self._show_snapshot(item)
        return _rewritten(reply, root)

    # --- EC2: images -----------------------------------------------------------------------------------

    def _create_image(self, req: _Request) -> _Reply:
        with self._image_lock:
            return self._create_image_locked(req)

    def _create_image_locked(self, req: _Request) -> _Reply:
        instance_id, name = req.params.get("InstanceId"), req.params.get("Name", "")
        client = self._ec2(req)
        with self._lock:
            duplicate = next((i for i, image in self._images.items() if image.name == name), None)
        if duplicate is None:
            found = client.describe_images(
                Owners=["self"], Filters=[{"Name": "name", "Values": [name]}]
            )["Images"]
            duplicate = found[0]["ImageId"] if found else None
        if duplicate is not None:
            raise _ApiError("InvalidAMIName.Duplicate",
                            f"AMI name {name} is already in use by AMI {duplicate}")
        instance = self._instance(req, instance_id)
        if instance is None:
            return self._forward(req)  # moto reports the unknown instance
        root_device = instance["RootDeviceName"]
        no_device = {d for d, m in req.mappings().items() if "NoDevice" in m}
        attached = {m["DeviceName"]: m["Ebs"] for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m}
        included = {
            d: ebs["VolumeId"] for d, ebs in attached.items() if d != root_device and d not in no_device
        }

        # moto raises NotImplementedError on snapshot TagSpecifications: tag the snapshots ourselves.
        req, snapshot_tags = req.without_tag_specifications("snapshot")
        reply = self._forward(req)
        if not reply.ok:
            return reply
        image_id = _text(_xml(reply), "imageId")
        self._hook("image_created", image_id, instance_id, included, req.flag("NoReboot"))

        # AWS snapshots every included volume; moto made only the root snapshot.
        snapshots: list[tuple[str, int, bool]] = []
        carried = {}
        for device, volume_id in included.items():
            volume = self._volume(req, volume_id)
            if volume is None:
                continue
            incremental = self._has_completed_snapshot(req, volume_id)
            snapshot_id = client.create_snapshot(
                VolumeId=volume_id, Description=f"Created by CreateImage({instance_id}) for {image_id}"
            )["SnapshotId"]
            carried[device] = _Carried(volume_id, snapshot_id, volume["Size"], volume["VolumeType"],
                                       bool(attached[device].get("DeleteOnTermination")))
            snapshots.append((snapshot_id, volume["Size"], incremental))
        moto_image = client.describe_images(ImageIds=[image_id])["Images"][0]
        root_snapshot = next((m["Ebs"].get("SnapshotId") for m in moto_image["BlockDeviceMappings"]
                              if m["DeviceName"] == moto_image["RootDeviceName"] and "Ebs" in m), None)
        root_volume = self._volume(req, attached.get(root_device, {}).get("VolumeId"))
        if root_snapshot and root_volume:
            snapshots.append((root_snapshot, root_volume["Size"],
                              self._has_completed_snapshot(req, root_volume["VolumeId"])))
        if snapshot_tags and snapshots:
            client.create_tags(Resources=[sid for sid, _, _ in snapshots], Tags=snapshot_tags)
        with self._lock:
            self._images[image_id] = _Image(name, moto_image["RootDeviceName"], root_snapshot, carried)
        for snapshot_id, size, incremental in snapshots:
            self._snapshot_pending(snapshot_id, self._latency.snapshot(size, incremental))
        self._begin(image_id, "pending", self._latency.image((size, incr) for _, size, incr in snapshots))
        return reply

    def _describe_images(self, req: _Request) -> _Reply:
        reply = self._forward(req)
        if not reply.ok:
            return reply
        root = _xml(reply)
        for item in root.iterfind(_path("imagesSet/item")):
            image_id = _text(item, "imageId")
            if (phase := self._shown(image_id)) is not None:
                _set_text(item, "imageState", phase.state)
            with self._lock:
                image = self._images.get(image_id)
            mappings = item.find(_path("blockDeviceMapping"))
            if image is None or mappings is None:
                continue
            # moto lists one root mapping whatever the request said: tell what the image carries.
            for mapping in list(mappings):
                if _text(mapping, "deviceName") != image.root_device:
                    mappings.remove(mapping)
            for device, carried in sorted(image.devices.items()):
                mapping = _sub(mappings, "item")
                _sub(mapping, "deviceName", device)
                ebs = _sub(mapping, "ebs")
                _sub(ebs, "deleteOnTermination", str(carried.delete_on_termination).lower())
                _sub(ebs, "snapshotId", carried.snapshot_id)
                _sub(ebs, "volumeSize", str(carried.size))
                _sub(ebs, "volumeType", carried.volume_type)
                _sub(ebs, "encrypted", "false")
        return _rewritten(reply, root)

    def _deregister_image(self, req: _Request) -> _Reply:
        image_id = req.params.get("ImageId")
        client = self._ec2(req)
        snapshots: list[str] = []
        if req.flag("DeleteAssociatedSnapshots"):
            with self._lock:
                image = self._images.get(image_id)
            try:
                moto_image = client.describe_images(ImageIds=[image_id])["Images"]
            except ClientError:
                moto_image = []  # moto reports it below
            snapshots = [m["Ebs"]["SnapshotId"] for i in moto_image for m in i["BlockDeviceMappings"]
                         if m.get("Ebs", {}).get("SnapshotId")]
            snapshots += [c.snapshot_id for c in image.devices.values()] if image else []
        reply = self._forward(req)
        if not reply.ok:
            return reply
        with self._lock:
            self._images.pop(image_id, None)
        self._forget(image_id)
        self._hook("image_deregistered", image_id)
        if not snapshots:
            return reply
        root = _xml(reply)
        results = _sub(root, "deleteSnapshotResultSet")
        for snapshot_id in snapshots:
            try:
                client.delete_snapshot(SnapshotId=snapshot_id)
                code = "success"
            except ClientError as e:
                logger.warning("deleting %s of %s: %s", snapshot_id, image_id, e)
                code = "client-error"
            self._forget(snapshot_id)
            result = _sub(results, "item")
            _sub(result, "snapshotId", snapshot_id)
            _sub(result, "returnCode", code)
        return _rewritten(reply, root)

    # --- EC2: Elastic IPs ------------------------------------------------------------------------------

    def _associate_address(self, req: _Request) -> _Reply:
        if "AllocationId" in req.params and "AllowReassociation" not in req.params:
            # AWS moves a VPC address already in use; moto refuses unless told.
            req = req.with_param("AllowReassociation", "true")
        reply = self._forward(req)
        if reply.ok:
            address = self._address(req, AllocationId=req.params.get("AllocationId"),
                                    PublicIp=req.params.get("PublicIp"))
            if address is not None:
                self._hook("address_moved", address["PublicIp"], address.get("InstanceId"))
        return reply

    def _disassociate_address(self, req: _Request) -> _Reply:
        address = self._address(req, AssociationId=req.params.get("AssociationId"),
                                PublicIp=req.params.get("PublicIp"))
        reply = self._forward(req)
        if reply.ok and address is not None:
            self._hook("address_moved", address["PublicIp"], None)
        return reply

    _EC2_HANDLERS: dict[str, Callable[[AwsFront, _Request], _Reply]] = {
        "RunInstances": _run_instances,
        "StopInstances": _stop_instances,
        "StartInstances": _start_instances,
        "TerminateInstances": _terminate_instances,
        "DescribeInstances": _describe_instances,
        "DescribeInstanceStatus": _describe_instance_status,
        "GetConsoleOutput": _get_console_output,
        "CreateVolume": _create_volume,
        "AttachVolume": _attach_volume,
        "DetachVolume": _detach_volume,
        "DeleteVolume": _delete_volume,
        "DescribeVolumes": _describe_volumes,
        "CreateSnapshot": _create_snapshot,
        "DeleteSnapshot": _delete_snapshot,
        "DescribeSnapshots": _describe_snapshots,
        "CreateImage": _create_image,
        "DescribeImages": _describe_images,
        "DeregisterImage": _deregister_image,
        "AssociateAddress": _associate_address,
        "DisassociateAddress": _disassociate_address,
    }
