"""The simulated world: hosts, their disks and sshd, the p2p network, and who holds which IP.

One ``World`` lives in the supervisor process. The AWS front layer calls its ``WorldHooks`` methods;
node daemons and host tools reach it over the coordinator's HTTP API (``simcell.coordinator``).

The network rule (shared/reference/kaia-node.md): a CN and a PN are peers when both run on hosts
that are up and either one's static-nodes.json lists the other's node ID *at its current IP*: the lister
dials, and the other side accepts an inbound connection from any address (kaiachain/kaia p2p/server.go,
``checkInboundConn``: only ``--netrestrict`` refuses a source). So a CN that comes back with the validator's
key and its PN list reaches the PNs from whatever IP it has. A CN
also peers with the other operators' CNs only when its node ID and IP are the ones registered for
its core cell (their firewalls allow it by source IP). PNs always reach the wider network. A node
catches up only while it has peers. Two nodes with one node ID that both had peers within
``DOUBLE_SIGN_WINDOW`` seconds (an IP flapping between them counts) is a double-signing event.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from simcell import paths

log = logging.getLogger(__name__)

GENESIS_HEIGHT = 190_000_000
EXTERNAL_CNS = 3  # other operators' CNs a registered validator peers with
EXTERNAL_PNS = 2  # the wider network's PNs/ENs a PN peers with
HEARTBEAT_TTL = 1.5
DOUBLE_SIGN_WINDOW = 3.0


ANY_HOST = "*"  # ssh:* faults: the next matching session to any host


@dataclass
class Host:
    name: str
    kind: str  # "ec2" | "metal"
    label: str = ""
    cell: str = ""
    role: str = ""  # cn-active | cn-standby | pn | ""
    instance_id: str | None = None
    private_ip: str = ""  # where its sshd listens (a loopback address)
    public_ip: str = ""  # metal: its fixed address
    up: bool = False
    ssh_cut: bool = False
    host_key: str = ""
    terminated: bool = False
    user_data: str = ""  # cloud-init: its bootcmd runs at each boot, before the enabled services


@dataclass
class NodeState:
    host: str
    service: str
    kind: str
    pid: int
    node_id: str
    height: int
    static: set
    seen: float = field(default_factory=time.monotonic)
    peered: float = 0.0  # when it last had peers


def copy_tree(src: Path, dst: Path) -> None:
    """Copy files as a block device snapshot would, minus sockets (an image of a socket is inert)."""

    def ignore(directory, names):
        return [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(directory, n)).st_mode)]

    shutil.copytree(src, dst, ignore=ignore, symlinks=True, dirs_exist_ok=True)


class World:
    def __init__(self, coord_url_getter, stop_seconds: float = 0.5):
        self.lock = threading.RLock()
        self.hosts: dict[str, Host] = {}
        self.attachments: dict[str, dict[str, str]] = {}  # instance id -> {device: volume id}
        self.sshd: dict[str, subprocess.Popen] = {}
        self.nodes: dict[tuple[str, str], NodeState] = {}
        self.eips: dict[str, str | None] = {}  # Elastic IP -> instance id
        self.floating: dict[str, list[str]] = {}  # floating IP -> hosts that configured it, ARP owner last
        self.routes: list[dict] = []
        self.validators: dict[str, tuple[str, str]] = {}  # cell -> (node id, ip) the network expects
        self.isolated: set[str] = set()  # cells whose validator the other operators' CNs refuse (fault isolate:CELL)
        self.events: list[dict] = []
        self._open_pairs: set[frozenset] = set()
        self.ssh_faults: dict[str, list[dict]] = {}  # host -> [{"kind": drop|drop-after, "match": str|None}]
        self.stop_seconds: dict[str, float] = {}
        self.default_stop_seconds = stop_seconds
        self.t0 = time.time()
        self.coord_url = coord_url_getter

    # ----- the chain -----------------------------------------------------------------------------------
    def head(self) -> int:
        return GENESIS_HEIGHT + int(time.time() - self.t0)

    # ----- hosts -----------------------------------------------------------------------------------------
    def add_host(self, host: Host) -> Host:
        with self.lock:
            self.hosts[host.name] = host
            if host.instance_id:
                self.attachments.setdefault(host.instance_id, {})
        paths.host_root(host.name).mkdir(parents=True, exist_ok=True)
        return host

    def host_by_instance(self, instance_id: str) -> Host | None:
        return next((h for h in self.hosts.values() if h.instance_id == instance_id), None)

    def host_env(self, name: str) -> dict:
        return {
            "SIMCELL_HOST": name,
            "SIMCELL_COORD": self.coord_url(),
            "SIMCELL_DIR": str(paths.STATE),
            "SIMCELL_OWNER": str(paths.STATE),  # how `simcell down` finds what the cell started
            "PYTHONPATH": str(paths.REPO),
        }

    def run_on_host(self, name: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """What systemd does at boot and shutdown: a command in the host's view, without SSH."""
        env = dict(os.environ) | self.host_env(name) | {"SSH_ORIGINAL_COMMAND": command, "SIMCELL_BOOT": "1"}
        return subprocess.run(
            [paths.PYTHON, "-m", "simcell.hostshell"], env=env, capture_output=True, text=True, timeout=timeout
        )

    def _host_key(self, name: str) -> Path:
        key = paths.host_dir(name) / "ssh" / "ssh_host_ed25519_key"
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", str(key)],
                           check=True)
        self.hosts[name].host_key = " ".join(key.with_suffix(".pub").read_text().split()[:2])
        return key

    def start_sshd(self, name: str) -> None:
        host = self.hosts[name]
        key = self._host_key(name)
        sshd_dir = key.parent
        # SHLVL=1: bash run by sshd sources ~/.bashrc only at shell level 1; a simulated host must not run the
        # build machine's own root shell setup (pyenv init and the like) before every command.
        env_line = " ".join(f"{k}={v}" for k, v in (self.host_env(name) | {"SHLVL": "1"}).items())
        config = sshd_dir / "sshd_config"
        config.write_text(
            f"ListenAddress {host.private_ip}\nPort {paths.SSH_PORT}\nHostKey {key}\n"
            f"PidFile {sshd_dir / 'sshd.pid'}\nAuthorizedKeysFile {paths.KEYS / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nPrintMotd no\nMaxStartups 100:30:200\nMaxSessions 50\n"
            f"SetEnv {env_line}\nForceCommand {paths.PYTHON} -m simcell.hostshell\n"
            "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(sshd_dir / "sshd.log", "ab"),
            start_new_session=True,
        )
        self.sshd[name] = proc
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host.private_ip, paths.SSH_PORT), timeout=0.5).close()
                return
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"sshd for {name} exited; see {sshd_dir / 'sshd.log'}") from None
                time.sleep(0.05)
        raise RuntimeError(f"sshd for {name} did not listen on {host.private_ip}:{paths.SSH_PORT}")

    def stop_sshd(self, name: str) -> None:
        proc = self.sshd.pop(name, None)
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)

    def _fstab(self, name: str) -> dict[str, str]:
        """``{device: mountpoint}`` from the host's /etc/fstab (root file system, so images carry it)."""
        fstab = paths.host_root(name) / "etc" / "fstab"
        out = {}
        if fstab.exists():
            for line in fstab.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and not line.startswith("#"):
                    out[parts[0]] = parts[1]
        return out

    def add_fstab(self, name: str, device: str, mountpoint: str) -> None:
        fstab = paths.host_root(name) / "etc" / "fstab"
        fstab.parent.mkdir(parents=True, exist_ok=True)
        with fstab.open("a") as f:
            f.write(f"{device} {mountpoint} ext4 defaults,nofail 0 2\n")

    def _mounts_file(self, name: str) -> Path:
        return paths.host_dir(name) / "mounts.json"

    def mounts(self, name: str) -> dict[str, str]:
        f = self._mounts_file(name)
        return json.loads(f.read_text()) if f.exists() else {}

    def _set_mounts(self, name: str, mounts: dict[str, str]) -> None:
        self._mounts_file(name).write_text(json.dumps(mounts, indent=1))

    def boot(self, name: str) -> None:
        """Power on: mount what fstab names and is attached, start sshd and enabled services."""
        host = self.hosts[name]
        attached = self.attachments.get(host.instance_id or "", {})
        self._set_mounts(
            name,
            {mp: str(paths.VOLUMES / attached[dev]) for dev, mp in self._fstab(name).items() if dev in attached},
        )
        host.up = True
        if not host.ssh_cut:
            self.start_sshd(name)
        self._cloud_init_bootcmd(host)
        for service in ("kcnd", "kpnd"):
            if (paths.host_root(name) / "etc" / service / ".enabled").exists():
                result = self.run_on_host(name, f"systemctl start {service}")
                log.info("boot %s: start %s -> %s %s", name, service, result.returncode, result.stderr.strip())

    def _cloud_init_bootcmd(self, host: Host) -> None:
        """cloud-init's ``bootcmd`` (a list of argv lists or shell strings); ``cloud-init-per once NAME cmd...`` runs
        its command on the first boot only (a marker per instance, as cloud-init keeps in /var/lib/cloud)."""
        if not host.user_data.startswith("#cloud-config"):
            return
        import shlex

        import yaml

        for cmd in (yaml.safe_load(host.user_data) or {}).get("bootcmd") or []:
            argv = cmd if isinstance(cmd, list) else ["sh", "-c", str(cmd)]
            if argv[:2] == ["cloud-init-per", "once"]:
                marker = paths.host_dir(host.name) / f"cloud-init-per-{argv[2]}"
                if marker.exists():
                    continue
                marker.touch()
                argv = argv[3:]
            result = self.run_on_host(host.name, " ".join(shlex.quote(str(a)) for a in argv))
            log.info("cloud-init bootcmd on %s: %s -> %s", host.name, argv, result.returncode)

    def instance_user_data(self, instance_id: str, text: str) -> None:
        host = self.host_by_instance(instance_id)
        if host:
            host.user_data = text

    def shutdown(self, name: str, graceful: bool = True) -> None:
        """Power off: services get a clean stop (graceful) or die with the machine."""
        host = self.hosts[name]
        if not host.up:
            return
        for (node_host, service), node in list(self.nodes.items()):
            if node_host != name:
                continue
            if graceful:
                self.run_on_host(name, f"systemctl stop {service}")
            else:
                self.kill_node(name, service)
        self.stop_sshd(name)
        host.up = False
        with self.lock:
            for holders in self.floating.values():  # `ip addr add` does not survive a power cycle
                if name in holders:
                    holders.remove(name)
            for node_key in [k for k in self.nodes if k[0] == name]:
                del self.nodes[node_key]
        self._set_mounts(name, {})

    def kill_node(self, name: str, service: str) -> bool:
        node = self.nodes.get((name, service))
        if not node:
            return False
        try:
            os.kill(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        with self.lock:
            self.nodes.pop((name, service), None)
        return True

    def cut_ssh(self, name: str) -> None:
        self.hosts[name].ssh_cut = True
        self.stop_sshd(name)

    # ----- WorldHooks (called by the AWS front layer) ---------------------------------------------------
    def snapshot_created(self, snapshot_id: str, volume_id: str) -> None:
        src = paths.VOLUMES / volume_id
        dst = paths.SNAPSHOTS / snapshot_id
        dst.mkdir(parents=True, exist_ok=True)
        if src.exists():
            copy_tree(src, dst)

    def volume_created(self, volume_id: str, snapshot_id: str | None, size_gib: int) -> None:
        dst = paths.VOLUMES / volume_id
        dst.mkdir(parents=True, exist_ok=True)
        if snapshot_id and snapshot_id.startswith("image:"):
            _, image_id, device = snapshot_id.split(":", 2)
            src = paths.IMAGES / image_id / "data" / device.strip("/").replace("/", "_")
        else:
            src = paths.SNAPSHOTS / snapshot_id if snapshot_id else None
        if src and src.exists():
            copy_tree(src, dst)

    def volume_attached(self, volume_id: str, instance_id: str, device: str) -> None:
        with self.lock:
            self.attachments.setdefault(instance_id, {})[device] = volume_id

    def volume_detached(self, volume_id: str, instance_id: str, device: str) -> None:
        with self.lock:
            self.attachments.get(instance_id, {}).pop(device, None)
            host = self.host_by_instance(instance_id)
            if host:
                mounts = self.mounts(host.name)
                self._set_mounts(host.name, {mp: d for mp, d in mounts.items() if not d.endswith(volume_id)})

    def volume_deleted(self, volume_id: str) -> None:
        shutil.rmtree(paths.VOLUMES / volume_id, ignore_errors=True)

    def snapshot_deleted(self, snapshot_id: str) -> None:
        shutil.rmtree(paths.SNAPSHOTS / snapshot_id, ignore_errors=True)

    def instance_launched(self, instance_id: str, image_id: str, private_ip: str) -> None:
        host = self.host_by_instance(instance_id) or self.add_host(
            Host(name=instance_id, kind="ec2", label=instance_id, instance_id=instance_id, private_ip=private_ip)
        )
        image_root = paths.IMAGES / image_id / "root"
        if image_root.exists():
            copy_tree(image_root, paths.host_root(host.name))

    def instance_running(self, instance_id: str) -> None:
        host = self.host_by_instance(instance_id)
        if host and not host.up and not host.terminated:
            self.boot(host.name)

    def instance_stopping(self, instance_id: str, graceful: bool = True) -> None:
        """A stop with the OS shutdown stops services cleanly; one without (SkipOsShutdown) is a power-off."""
        host = self.host_by_instance(instance_id)
        if host:
            self.shutdown(host.name, graceful=graceful)

    def instance_terminated(self, instance_id: str) -> None:
        host = self.host_by_instance(instance_id)
        if host:
            self.shutdown(host.name, graceful=True)
            host.terminated = True
        with self.lock:
            for ip, holder in self.eips.items():
                if holder == instance_id:
                    self.eips[ip] = None

    def console_output(self, instance_id: str) -> str | None:
        host = self.host_by_instance(instance_id)
        if not host or not host.host_key:
            return None
        return (
            f"[   10.2] cloud-init[1021]: Cloud-init v. 24.1 running 'modules:final'\n"
            "-----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
            f"{host.host_key.split()[0]} root@{host.name}\n"
            "-----END SSH HOST KEY FINGERPRINTS-----\n"
            "-----BEGIN SSH HOST KEY KEYS-----\n"
            f"{host.host_key} root@{host.name}\n"
            "-----END SSH HOST KEY KEYS-----\n"
        )

    def image_created(self, image_id: str, instance_id: str, included_devices: dict[str, str], no_reboot: bool) -> None:
        host = self.host_by_instance(instance_id)
        image = paths.IMAGES / image_id
        (image / "data").mkdir(parents=True, exist_ok=True)
        running = [svc for (h, svc) in self.nodes if host and h == host.name]
        if host and not no_reboot:
            for service in running:  # a reboot: the OS stops its services cleanly first
                self.run_on_host(host.name, f"systemctl stop {service}")
        if host:
            copy_tree(paths.host_root(host.name), image / "root")
        sizes = {}
        for device, volume_id in included_devices.items():
            copy_tree(paths.VOLUMES / volume_id, image / "data" / device.strip("/").replace("/", "_"))
            sizes[device] = 0
        (image / "meta.json").write_text(json.dumps({"instance_id": instance_id, "data_devices": sizes}))
        if host and not no_reboot:
            for service in running:
                self.run_on_host(host.name, f"systemctl start {service}")

    def image_deregistered(self, image_id: str) -> None:
        shutil.rmtree(paths.IMAGES / image_id, ignore_errors=True)

    def image_data_volumes(self, image_id: str) -> dict[str, int]:
        meta = paths.IMAGES / image_id / "meta.json"
        return json.loads(meta.read_text())["data_devices"] if meta.exists() else {}

    def address_moved(self, public_ip: str, instance_id: str | None) -> None:
        with self.lock:
            self.eips[public_ip] = instance_id

    # ----- the network -----------------------------------------------------------------------------------
    def host_ip(self, name: str) -> str:
        """The address the node's peers see: its Elastic IP, the floating IP it owns, or its own."""
        host = self.hosts[name]
        if host.instance_id:
            for ip, holder in self.eips.items():
                if holder == host.instance_id:
                    return ip
            return host.private_ip
        for ip, holders in self.floating.items():
            if holders and holders[-1] == name:
                return ip
        return host.public_ip

    def _alive(self) -> list[NodeState]:
        now = time.monotonic()
        return [n for n in self.nodes.values() if now - n.seen < HEARTBEAT_TTL and self.hosts[n.host].up]

    def _links(self, node: NodeState, alive: list[NodeState]) -> list[NodeState]:
        """CN-PN links: either side dials the other from its static-nodes.json (by node ID and IP) and the other
        accepts the inbound connection (no --netrestrict in a core cell)."""
        me = (node.node_id, self.host_ip(node.host))
        other = "pn" if node.kind == "cn" else "cn"
        return [n for n in alive
                if n.kind == other and (me in n.static or (n.node_id, self.host_ip(n.host)) in node.static)]

    def _peers(self, node: NodeState, alive: list[NodeState]) -> tuple[dict, int]:
        links = self._links(node, alive)
        cn = sum(1 for n in links if n.kind == "cn")
        pn = sum(1 for n in links if n.kind == "pn")
        best = max((n.height for n in links), default=0)
        head = self.head()
        if node.kind == "pn":
            pn += EXTERNAL_PNS
            best = head
        elif self._registered_cell(node) not in (None, *self.isolated):
            cn += EXTERNAL_CNS
            best = head
        counts = {k: v for k, v in (("cn", cn), ("pn", pn)) if v} | {"total": cn + pn}
        return counts, best

    def _registered_cell(self, node: NodeState) -> str | None:
        """The cell whose registered validator this CN is (its node ID at the registered IP), if any."""
        me = (node.node_id, self.host_ip(node.host))
        return next((cell for cell, registered in self.validators.items() if registered == me), None)

    def heartbeat(self, report: dict) -> dict:
        key = (report["host"], report["service"])
        with self.lock:
            if report.get("stopped"):
                self.nodes.pop(key, None)
                return {"peers": {"total": 0}, "best": 0}
            node = self.nodes.get(key)
            if node is None or node.pid != report["pid"]:
                node = NodeState(report["host"], report["service"], report["kind"], report["pid"], report["node_id"], 0,
                                 set())
                self.nodes[key] = node
            node.height, node.seen = report["height"], time.monotonic()
            node.static = {tuple(entry) for entry in report["static"]}
            alive = self._alive()
            peers, best = self._peers(node, alive)
            if peers["total"] > 0:
                node.peered = time.monotonic()
            self._check_double_signing()
            return {
                "peers": peers,
                "best": best,
                "head": self.head(),
                "ip": self.host_ip(node.host),
                "stop_seconds": self.stop_seconds.get(node.host, self.default_stop_seconds),
            }

    def _check_double_signing(self) -> None:
        recent = time.monotonic() - DOUBLE_SIGN_WINDOW
        by_id: dict[str, list[NodeState]] = {}
        for n in self.nodes.values():
            if n.kind == "cn" and n.peered > recent:
                by_id.setdefault(n.node_id, []).append(n)
        current = set()
        for node_id, nodes in by_id.items():
            if len(nodes) > 1:
                pair = frozenset(n.host for n in nodes)
                current.add(pair)
                if pair not in self._open_pairs:
                    self.events.append(
                        {"time": time.time(), "node_id": node_id,
                         "hosts": sorted(self.hosts[h].label or h for h in pair)}
                    )
                    log.warning("double signing: node %s… on %s", node_id[:16], sorted(pair))
        self._open_pairs = current

    def ip_op(self, req: dict) -> dict:
        host, op, ip = req["host"], req["op"], req.get("ip")
        with self.lock:
            if op == "add":
                holders = self.floating.setdefault(ip, [])
                if host in holders:
                    return {"error": "File exists"}
                # Without a gratuitous ARP, neighbours keep sending to the old holder.
                holders.insert(0, host)
            elif op == "del":
                holders = self.floating.get(ip, [])
                if host not in holders:
                    return {"error": "Cannot assign requested address"}
                holders.remove(host)
            elif op == "arp":
                holders = self.floating.get(ip, [])
                if host not in holders:
                    return {"error": f"{ip} is not configured on this host"}
                holders.remove(host)
                holders.append(host)
            elif op == "route":
                args = req.get("args", [])
                src = args[args.index("src") + 1] if "src" in args[:-1] else None
                if src and src != self.hosts[host].public_ip and host not in self.floating.get(src, []):
                    return {"error": "Invalid prefsrc address."}  # the kernel's answer: src must be local
                self.routes.append({"host": host, "args": args})
            elif op == "dad":
                # arping -D: does any other host that is up answer ARP for this address?
                return {"answered_by": [h for h in self.floating.get(ip, []) if h != host and self.hosts[h].up]}
            devices = {"eth0": [self.hosts[host].public_ip] + [ip for ip, hs in self.floating.items() if host in hs]}
            return {"devices": devices}

    def mount_op(self, req: dict) -> dict:
        name, op = req["host"], req["op"]
        host = self.hosts[name]
        mounts = self.mounts(name)
        if op == "list":
            return {"mounts": mounts}
        if op == "umount":
            if req["mountpoint"] not in mounts:
                return {"error": "not mounted"}
            mounts.pop(req["mountpoint"])
            self._set_mounts(name, mounts)
            return {}
        device = req["device"]
        # Nitro instances show /dev/sdf as /dev/nvme1n1; accept the names an operator would type.
        aliases = {device, device.replace("/dev/xvd", "/dev/sd")}
        attached = self.attachments.get(host.instance_id or "", {})
        volume = next((v for d, v in attached.items() if d in aliases), None)
        if volume is None:
            return {"error": f"special device {device} does not exist"}
        if req["mountpoint"] in mounts:
            return {"error": f"{req['mountpoint']} already mounted"}
        mounts[req["mountpoint"]] = str(paths.VOLUMES / volume)
        self._set_mounts(name, mounts)
        return {"volume_dir": str(paths.VOLUMES / volume)}

    def add_ssh_faults(self, host: str, faults: list[dict]) -> None:
        with self.lock:
            self.ssh_faults.setdefault(host, []).extend(faults)
            self._flag_ssh_faults()

    def clear_ssh_faults(self) -> None:
        with self.lock:
            self.ssh_faults.clear()
            self._flag_ssh_faults()

    def _flag_ssh_faults(self) -> None:
        if any(self.ssh_faults.values()):
            paths.SSH_FAULTS_FLAG.touch()
        else:
            paths.SSH_FAULTS_FLAG.unlink(missing_ok=True)

    def take_ssh_fault(self, host: str, command: str = "") -> str | None:
        """The next pending fault of this host whose ``match`` (if any) is part of the command; then the faults
        for any host (``ssh:*``: a host that does not exist yet, like a replacement instance)."""
        with self.lock:
            for queue in (self.ssh_faults.get(host) or [], self.ssh_faults.get(ANY_HOST) or []):
                for i, fault in enumerate(queue):
                    if not fault.get("match") or fault["match"] in command:
                        kind = queue.pop(i)["kind"]
                        self._flag_ssh_faults()
                        return kind
            return None

    # ----- status ------------------------------------------------------------------------------------------
    def status(self) -> dict:
        with self.lock:
            alive = self._alive()
            nodes = []
            for host in self.hosts.values():
                for service in ("kcnd", "kpnd"):
                    node = next((n for n in alive if n.host == host.name and n.service == service), None)
                    expected = "kpnd" if host.role == "pn" else "kcnd"
                    if node is None and service != expected:
                        continue
                    peers = self._peers(node, alive)[0] if node else {"total": 0}
                    nodes.append(
                        {
                            "name": host.label or host.name,
                            "role": host.role or "unassigned",
                            "cell": host.cell,
                            "service": service,
                            "host": host.name,
                            "instance_id": host.instance_id,
                            "host_up": host.up,
                            "ssh": host.up and not host.ssh_cut,
                            "running": node is not None,
                            "node_id": node.node_id if node else None,
                            "block_height": node.height if node else None,
                            "peer_count": peers,
                            "ip": self.host_ip(host.name),
                        }
                    )
            label = {h.instance_id: h.label or h.name for h in self.hosts.values() if h.instance_id}
            return {
                "network_head": self.head(),
                "nodes": nodes,
                "elastic_ips": {ip: label.get(iid, iid) if iid else None for ip, iid in self.eips.items()},
                "floating_ips": {ip: (hs[-1] if hs else None) for ip, hs in self.floating.items()},
                "double_signing_events": list(self.events),
                "isolated_cells": sorted(self.isolated),
                "routes": [dict(r, host=self.hosts[r["host"]].label or r["host"]) for r in self.routes],
                "hosts": [asdict(h) for h in self.hosts.values()],
            }
