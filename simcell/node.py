"""A simulated kcn (CN) or kpn (PN) process, started by the host's ``systemctl``.

It follows the real node where a failover depends on it (shared/reference/kaia-node.md):
nodekey path precedence and silent regeneration, bls-nodekey derivation, the flock on ``klay/LOCK``,
a clean stop on SIGTERM (``Blockchain manager stopped``, ``Database closed``), DB flags and schema
checked at start, and an IPC socket ``$DATA_DIR/klay.ipc`` that ``kcn attach`` talks to.

Chain data is ``klay/chaindata/`` with one directory per table; ``misc/CURRENT.json`` holds the head
the node last flushed, the newest block whose state trie is on disk (``state``) and whether the
database was closed cleanly. As in the real node, the state trie reaches the disk only every
``STATE_INTERVAL`` blocks while it runs, and at the head on a clean stop. A copy taken while it runs (a
snapshot) or a kill therefore lacks the head's state: on start the node rewinds to the last block with
state and imports the rest again; it refuses only when not even the genesis state is there.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

from simcell import identity

TABLES = ("misc", "header", "body", "receipts", "txlookup", "snapshot")
FLUSH_SECONDS = 2.0
TICK = 0.25
CATCH_UP_PER_SECOND = 2000  # blocks a node with peers imports per second when behind
# kaiachain/kaia blockchain/blockchain.go: DefaultBlockInterval = 128, "Block interval to flush the trie. Each
# interval state trie will be flushed into disk"; Stop() writes the head's cached state ("Writing cached state
# to disk").
STATE_INTERVAL = 128
# The node's p2p (devp2p, as in go-ethereum) drops a peer connection after frameReadTimeout = 30 s without a frame:
# a host too loaded to answer for a few seconds keeps its peers. Here the coordinator plays the network, so a
# heartbeat that times out (the machine loaded) keeps the last view that long; a refused one (the cell gone) does not.
PEER_TIMEOUT = 30.0


def schema_of(version: str) -> int:
    """DB schema a kcn/kpn version writes and understands: v2.2.x -> 22."""
    major, minor = version.lstrip("v").split(".")[:2]
    return int(major) * 10 + int(minor)


def parse_flags(additional: str) -> dict:
    args = shlex.split(additional or "")
    flags = {"dbtype": "LevelDB", "statetrie_shards": 4, "live_pruning": False, "nodekey_file": None}
    for i, arg in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else ""
        key, _, val = arg.partition("=")
        val = val or nxt
        if key == "--dbtype":
            flags["dbtype"] = val
        elif key == "--db.num-statetrie-shards":
            flags["statetrie_shards"] = int(val)
        elif key == "--state.live-pruning":
            flags["live_pruning"] = True
        elif key == "--nodekey":
            flags["nodekey_file"] = val
    return flags


def parse_static_nodes(path: Path) -> list[tuple[str, str]]:
    try:
        urls = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return parse_static_nodes_list(urls)


def parse_static_nodes_list(urls) -> list[tuple[str, str]]:
    out = []
    for url in urls if isinstance(urls, list) else []:
        try:
            rest = str(url).split("://", 1)[1]
            nid, addr = rest.split("@", 1)
            out.append((nid.lower(), addr.split(":", 1)[0]))
        except (IndexError, ValueError):
            continue
    return out


class Fatal(Exception):
    pass


class Node:
    def __init__(self, service: str, env: dict):
        self.service = service
        self.kind = "cn" if service == "kcnd" else "pn"
        self.binary = "kcn" if self.kind == "cn" else "kpn"
        self.env = env
        self.data_dir = Path(env.get("DATA_DIR") or f"/var/{service}/data")
        self.log_dir = Path(env.get("LOG_DIR") or f"/var/log/{service}")
        self.stop_timeout = float(env.get("STOP_TIMEOUT") or 10)
        self.flags = parse_flags(env.get("ADDITIONAL", ""))
        self.host = env["SIMCELL_HOST"]
        self.coord = env["SIMCELL_COORD"]
        self.version = Path(f"/opt/kaia/{self.binary}.version").read_text().strip()
        self.klay = self.data_dir / "klay"
        self.height = 0
        self.flushed_at = 0.0
        self.net = {"peers": {"total": 0}, "best": 0, "ip": "", "head": 0}
        self.stopping = threading.Event()
        self.log_file = None

    # ----- logging ---------------------------------------------------------------------------------
    def log(self, level: str, msg: str) -> None:
        stamp = time.strftime("%m-%d|%H:%M:%S", time.gmtime())
        self.log_file.write(f"{level} [{stamp}] {msg}\n")
        self.log_file.flush()

    # ----- start-up --------------------------------------------------------------------------------
    def _first(self, name: str) -> Path:
        """A file directly in DATA_DIR wins over the one in DATA_DIR/klay (the node's resolvePath)."""
        top = self.data_dir / name
        return top if top.exists() else self.klay / name

    def _load_nodekey(self) -> str:
        path = Path(self.flags["nodekey_file"]) if self.flags["nodekey_file"] else self._first("nodekey")
        try:
            key = path.read_bytes()[:64].decode()
            if identity.HEX64.match(key):
                return key.lower()
            problem = "invalid hex"
        except (OSError, UnicodeDecodeError) as exc:
            problem = type(exc).__name__
        if self.flags["nodekey_file"]:
            raise Fatal(f"Option --nodekey: {problem}")
        key = identity.new_nodekey()
        self._write_0600(self.klay / "nodekey", key)
        self.log("WARN", f"Generated nodekey path={self.klay / 'nodekey'}")
        return key

    def _load_bls(self) -> str:
        path = self._first("bls-nodekey")
        try:
            key = path.read_bytes()[:64].decode()
            if identity.HEX64.match(key):
                return key.lower()
        except (OSError, UnicodeDecodeError):
            pass
        key = identity.derive_bls(self.nodekey)
        self._write_0600(self.klay / "bls-nodekey", key)
        self.log("INFO", "Derived bls-nodekey from nodekey")
        return key

    @staticmethod
    def _write_0600(path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def _open_chaindata(self) -> None:
        chaindata = self._first("chaindata")
        current = chaindata / "misc" / "CURRENT.json"
        mine = schema_of(self.version)
        if not current.exists():
            for table in TABLES:
                (chaindata / table).mkdir(parents=True, exist_ok=True)
            for shard in range(self.flags["statetrie_shards"]):
                (chaindata / "statetrie" / str(shard)).mkdir(parents=True, exist_ok=True)
            self.db = {
                "head": 0,
                "clean": True,
                "state": 0,
                "dbtype": self.flags["dbtype"],
                "statetrie_shards": self.flags["statetrie_shards"],
                "live_pruning": self.flags["live_pruning"],
                "schema": mine,
            }
            self.log("INFO", f"Initialised chain configuration genesis=0 database={chaindata}")
        else:
            self.db = json.loads(current.read_text())
            if self.db["schema"] > mine:
                raise Fatal(f"database version is v{self.db['schema']}, {self.binary} {self.version} only supports "
                            f"v{mine}")
            if self.db["dbtype"] != self.flags["dbtype"]:
                raise Fatal(f"Failed to open database: written with --dbtype {self.db['dbtype']}, opened as "
                            f"{self.flags['dbtype']}")
            if self.db["statetrie_shards"] != self.flags["statetrie_shards"]:
                raise Fatal(
                    f"Failed to open database: {self.db['statetrie_shards']} statetrie shards on disk, "
                    f"--db.num-statetrie-shards={self.flags['statetrie_shards']}"
                )
            if self.db["live_pruning"] and not self.flags["live_pruning"]:
                self.log("INFO", "Live pruning is enabled in the database; inheriting it")
            self._repair(chaindata)
        self.current = current
        self.height = self.db["head"]

    def _repair(self, chaindata: Path) -> None:
        """What NewBlockChain does when the head block's state is missing (kaiachain/kaia blockchain/blockchain.go:
        "Head state missing, repairing chain", then setHeadBeyondRoot(head, common.Hash{}, true) walks back parent
        by parent to the newest block whose state opens). It fails only at block 0 without state: "rewound to
        block number 0, but repair failed"."""
        head = self.db["head"]
        state = self.db.get("state", head if self.db.get("clean") else head - head % STATE_INTERVAL)
        if state >= head:
            return
        self.log("WARN", f"Head state missing, repairing chain number={head}")
        tries = chaindata / "statetrie"
        if not tries.is_dir() or not any(tries.iterdir()):  # no state at all, not even the genesis block's
            raise Fatal("Error starting protocol stack: rewound to block number 0, but repair failed")
        self.db.update(head=state, state=state)
        self.log("INFO", f"Loaded most recent local full block number={state}")

    def _flush(self, clean: bool) -> None:
        # The state trie is on disk at the last STATE_INTERVAL block passed, and at the head after a clean stop.
        state = self.height if clean else max(self.db.get("state", 0), self.height - self.height % STATE_INTERVAL)
        self.db.update(head=self.height, state=min(state, self.height), clean=clean)
        tmp = self.current.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.db))
        os.replace(tmp, self.current)
        self.flushed_at = time.monotonic()

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.log_dir / f"{self.service}.out", "a")
        self.log("INFO", f"Starting {self.binary} {self.version} datadir={self.data_dir}")
        self.klay.mkdir(parents=True, exist_ok=True)
        os.chmod(self.klay, 0o700)
        self.lock_fd = os.open(self.klay / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Fatal("Error starting protocol stack: datadir already used by another process") from None
        self.nodekey = self._load_nodekey()
        self.node_id = identity.node_id(self.nodekey)
        self.bls = self._load_bls()
        self.static = parse_static_nodes(self._first("static-nodes.json"))
        self._open_chaindata()
        self._flush(clean=False)
        self.log("INFO", f"Started P2P networking self=kni://{self.node_id}@[::]:32323")
        self._serve_ipc()

    # ----- IPC (kcn attach) -------------------------------------------------------------------------
    def _serve_ipc(self) -> None:
        path = self.data_dir / "klay.ipc"
        path.unlink(missing_ok=True)
        self.ipc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ipc.bind(str(path))
        os.chmod(path, 0o600)
        self.ipc.listen(8)
        threading.Thread(target=self._ipc_loop, daemon=True).start()
        self.log("INFO", f"IPC endpoint opened url={path}")

    def _ipc_loop(self) -> None:
        while True:
            try:
                conn, _ = self.ipc.accept()
            except OSError:
                return
            with conn:
                try:
                    expr = conn.makefile().readline().strip()
                    if not expr:  # a liveness probe (systemctl start) connects and leaves
                        continue
                    try:
                        reply = {"ok": self.console(expr)}
                    except Exception as exc:  # the console prints the error, the node keeps running
                        reply = {"error": str(exc)}
                    conn.sendall((json.dumps(reply) + "\n").encode())
                except OSError:
                    continue

    def namespaces(self) -> dict:
        peers = self.net["peers"]
        behind = self.net["best"] - self.height
        syncing = (
            {"startingBlock": self.db["head"], "currentBlock": self.height, "highestBlock": self.net["best"],
             "pulledStates": 0, "knownStates": 0}
            if peers["total"] > 0 and behind > 2
            else False
        )
        bls_pub = identity.bls_public(self.bls)
        kaia = {"syncing": syncing, "blockNumber": self.height}
        info = {
            "id": self.node_id,
            "name": f"{self.binary.capitalize()}/{self.version}/linux-amd64/go1.23",
            "kni": f"kni://{self.node_id}@[::]:32323?discport=0&ntype={self.kind}",
            "ip": "::",
            "ports": {"discovery": 0, "listener": 32323},
            "listenAddr": "[::]:32323",
            "protocols": {"istanbul": {"network": 8217}},
            "nodeAddress": identity.node_address(self.nodekey),
            "blsPublicKeyInfo": {"publicKey": bls_pub, "pop": bls_pub[:96]},
        }
        return {
            "kaia": kaia,
            "klay": kaia,
            "net": {"peerCount": peers["total"], "peerCountByType": peers, "listening": True},
            "admin": {"nodeInfo": info, "datadir": str(self.data_dir), "addPeer": self.add_peer},
        }

    def add_peer(self, url: str) -> bool:
        """admin.addPeer: a static peer from now on, kept in memory only (static-nodes.json is read at start)."""
        entry = next(iter(parse_static_nodes_list([url])), None)
        if entry is None:
            raise ValueError(f"invalid kni: {url}")
        if entry not in self.static:
            self.static.append(entry)
        return True

    def console(self, expr: str):
        from simcell.console import evaluate

        return evaluate(expr, self.namespaces())

    # ----- running --------------------------------------------------------------------------------
    def heartbeat(self, stopped: bool = False) -> None:
        body = json.dumps(
            {
                "host": self.host,
                "service": self.service,
                "kind": self.kind,
                "pid": os.getpid(),
                "node_id": self.node_id,
                "height": self.height,
                "static": self.static,
                "stopped": stopped,
            }
        ).encode()
        req = urllib.request.Request(self.coord + "/node/heartbeat", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            self.net = json.loads(resp.read())

    def run(self) -> None:
        last = heard = time.monotonic()
        last_logged, warned = 0, ("", 0.0)
        while not self.stopping.is_set():
            try:
                self.heartbeat()
                heard = time.monotonic()
            except OSError as exc:
                slow = isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)
                if not slow or time.monotonic() - heard > PEER_TIMEOUT:
                    self.net["peers"] = {"total": 0}  # the cell's network is gone: no peers
                peers = self.net["peers"]["total"]
                line = f"network: {type(exc).__name__} ({'kept' if slow else 'lost'} {peers} peers)"
                if line != warned[0] or time.monotonic() - warned[1] > PEER_TIMEOUT:  # a change, else twice a minute
                    self.log("WARN", line)
                    warned = (line, time.monotonic())
            now = time.monotonic()
            if self.net["peers"]["total"] > 0 and self.height < self.net["best"]:
                step = max(1, int(CATCH_UP_PER_SECOND * (now - last)))
                self.height = min(self.net["best"], self.height + step)
                if self.height != last_logged:
                    self.log("INFO", f"Inserted a new block number={self.height}")
                    last_logged = self.height
            last = now
            if now - self.flushed_at >= FLUSH_SECONDS:
                self._flush(clean=False)
            self.stopping.wait(TICK)

    def stop(self) -> None:
        """SIGTERM: close cleanly; slower than STOP_TIMEOUT when the cell says so (a stuck flush)."""
        self.stopping.set()

    def shutdown(self) -> None:
        delay = float(self.net.get("stop_seconds", 0.5))
        self.log("INFO", "Got interrupt, shutting down...")
        self.ipc.close()  # the node stops its IPC endpoint before its services
        time.sleep(delay)
        self.log("INFO", f"Writing cached state to disk block={self.height}")
        self.log("INFO", "Blockchain manager stopped")
        self._flush(clean=True)
        self.log("INFO", "Database closed")
        (self.data_dir / "klay.ipc").unlink(missing_ok=True)
        try:
            self.heartbeat(stopped=True)
        except OSError:
            pass


def main() -> int:
    service = sys.argv[1]
    # No setproctitle: it overwrites /proc/<pid>/environ, where the host's tools and `simcell down`
    # find which simulated host a process belongs to.
    node = Node(service, dict(os.environ))
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    try:
        node.start()
    except Fatal as exc:
        node.log("ERROR", f"Fatal: {exc}")
        Path(f"/var/{service}/{service}.failed").write_text(str(exc))
        return 1
    node.run()
    node.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
