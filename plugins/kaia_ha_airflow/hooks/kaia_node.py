"""SSH access to one Kaia node's host: commands, the node's IPC console, and its key files.

Built on the SSH provider's ``SSHHook`` with host keys checked as the connection says (provider 7
refuses unknown hosts). Keys travel only over the SSH channel's stdin/stdout, never on a command line
and never in a log line or an exception message.
"""

from __future__ import annotations

import base64
import logging
import shlex
import socket
import time
from dataclasses import dataclass
from functools import cached_property

import paramiko
from airflow.providers.ssh.hooks.ssh import SSHHook

from kaia_ha.model.health import PROBE_EXPR, Probe
from kaia_ha.model.inventory import Node
from kaia_ha.model.keys import BlsKey, InvalidKeyError, NodeKey

log = logging.getLogger(__name__)

CLEAN_STOP_LINES = ("Blockchain manager stopped", "Database closed")
INTERRUPTED = "Got interrupt, shutting down"  # the node's first line on SIGTERM
_LIFECYCLE = ("Inserted a new block", "Starting", "IPC endpoint opened", INTERRUPTED, *CLEAN_STOP_LINES)


class NodeCommandError(RuntimeError):
    """A command on a node's host failed; the message says which and why (never a key)."""


class HostUnreachable(NodeCommandError):
    pass


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str


def _events(log_text: str) -> list[str]:
    return [e for line in log_text.splitlines() for e in _LIFECYCLE if e in line]


def shutdown_was_clean(log_text: str) -> bool:
    """True when the node's last lifecycle lines are a clean stop: manager stopped, then DB closed."""
    return _events(log_text)[-2:] == list(CLEAN_STOP_LINES)


def shutting_down(log_text: str) -> bool:
    """True when the node's last lifecycle line is the SIGTERM's: it is flushing and will exit on its own."""
    return _events(log_text)[-1:] == [INTERRUPTED]


class KaiaNodeHook:
    """One node's host.

    :param node: the inventory entry (paths, service, ssh_conn_id).
    :param remote_host: override the connection's host (a freshly launched instance).
    :param host_key: ``"ssh-ed25519 AAAA..."`` learned for ``remote_host`` (checked, never skipped).
    :param connect_attempts: connection attempts (the SSH hook waits 3-5 s between them); 1 where the
        caller decides itself what an unreachable host means (a failed CN).
    """

    def __init__(self, node: Node, *, ssh_conn_id: str | None = None, remote_host: str | None = None,
                 host_key: str | None = None, connect_timeout: int = 15, connect_attempts: int = 3):
        self.node = node
        self.ssh_conn_id = ssh_conn_id or node.ssh_conn_id
        self.remote_host = remote_host
        self.host_key = host_key
        self.connect_timeout = connect_timeout
        self.connect_attempts = connect_attempts
        self._client: paramiko.SSHClient | None = None

    @cached_property
    def ssh_hook(self) -> SSHHook:
        hook = SSHHook(ssh_conn_id=self.ssh_conn_id, remote_host=self.remote_host or "",
                       conn_timeout=self.connect_timeout,
                       conn_retry_attempts=self.connect_attempts)
        if self.host_key:
            key_type, data = self.host_key.split()[:2]
            hook.host_key = paramiko.PKey.from_type_string(key_type, base64.b64decode(data))
            hook.no_host_key_check = False
        return hook

    def client(self) -> paramiko.SSHClient:
        if self._client is None or not (self._client.get_transport() and self._client.get_transport().is_active()):
            try:
                self._client = self.ssh_hook.get_conn()
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise HostUnreachable(f"{self.node.name}: cannot open SSH ({self.ssh_conn_id}): {type(exc).__name__}: "
                                      f"{exc}") from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ----- commands --------------------------------------------------------------------------------------
    def run(self, command: str, *, timeout: float = 60, check: bool = True, stdin: str | None = None,
            secret_output: bool = False) -> Result:
        """Run one command. ``stdin`` carries secrets in; ``secret_output`` keeps stdout out of errors."""
        client = self.client()
        try:
            chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
            out = chan_out.read().decode(errors="replace")
            err = chan_err.read().decode(errors="replace")
            rc = chan_out.channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError, socket.timeout) as exc:
            self.close()
            raise HostUnreachable(f"{self.node.name}: SSH dropped during {command.split()[0:3]}: "
                                  f"{type(exc).__name__}") from None
        if rc == -1 or (rc == 255 and not out and not err):
            self.close()
            raise HostUnreachable(f"{self.node.name}: SSH session ended without an exit status")
        if check and rc != 0:
            shown = "" if secret_output else out[-500:]
            raise NodeCommandError(f"{self.node.name}: `{command}` exited {rc}: {err.strip()[-500:]} {shown}".rstrip())
        return Result(rc, out, err)

    # ----- the node ------------------------------------------------------------------------------------------
    def attach(self, expr: str, timeout: float = 30) -> str:
        cmd = self.node.attach_cmd.format(binary=self.node.binary, data_dir=shlex.quote(self.node.data_dir),
                                          expr=shlex.quote(expr))
        return self.run(cmd, timeout=timeout).stdout

    def probe(self) -> Probe:
        return Probe.from_console(self.attach(PROBE_EXPR))

    CONF_KEYS = ("DATA_DIR", "LOG_DIR", "ADDITIONAL", "STOP_TIMEOUT", "AUTO_RESTART_NODE")

    def conf(self, keys: tuple[str, ...] = CONF_KEYS) -> dict[str, str]:
        """Settings of kcnd.conf as the init script sees them (it sources the file): by default DATA_DIR,
        LOG_DIR, ADDITIONAL, STOP_TIMEOUT and AUTO_RESTART_NODE."""
        script = f". {shlex.quote(self.node.conf_path)}; " + "; ".join(f'printf "{k}=%s\\n" "${k}"' for k in keys)
        out = self.run(f"sudo bash -c {shlex.quote(script)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def log_path(self, conf: dict[str, str] | None = None) -> str:
        conf = conf or self.conf()
        log_dir = conf.get("LOG_DIR") or f"/var/log/{self.node.service}"
        return f"{log_dir}/{self.node.service}.out"

    def service_state(self) -> str:
        return self.run(f"systemctl is-active {self.node.service}", check=False).stdout.strip() or "unknown"

    def start_service(self, timeout: float = 120) -> None:
        self.run(f"sudo systemctl start {self.node.service}", timeout=timeout)

    def stop_service(self) -> dict:
        """Stop the daemon and prove it stopped cleanly: process gone and the clean-stop log lines."""
        conf = self.conf()
        stop_timeout = float(conf.get("STOP_TIMEOUT") or 10)
        started = time.time()
        # systemd waits STOP_TIMEOUT before SIGKILL: give the command more than that.
        self.run(f"sudo systemctl stop {self.node.service}", timeout=stop_timeout + 60)
        state = self.service_state()
        if state == "active":
            raise NodeCommandError(f"{self.node.name}: {self.node.service} is still active after `systemctl stop`")
        tail = self.run(f"sudo tail -n 300 {shlex.quote(self.log_path(conf))}", check=False).stdout
        return {"state": state, "clean": shutdown_was_clean(tail), "stop_seconds": round(time.time() - started, 2),
                "log_tail": "\n".join(tail.splitlines()[-5:])}

    def log_tail(self, lines: int = 300, conf: dict[str, str] | None = None) -> str:
        if conf is not None:
            return self.run(f"sudo tail -n {lines} {shlex.quote(self.log_path(conf))}", check=False).stdout
        # One round trip, not two: LOG_DIR as the init script sees it (it sources kcnd.conf), then the tail.
        service = self.node.service
        script = (f". {shlex.quote(self.node.conf_path)}; "
                  f'tail -n {int(lines)} "${{LOG_DIR:-/var/log/{service}}}/{service}.out"')
        return self.run(f"sudo bash -c {shlex.quote(script)}", check=False).stdout

    def stop_on_its_own(self, limit: float) -> dict:
        """SIGTERM to the node alone, then wait up to ``limit`` seconds for it to exit on its own; never a SIGKILL.

        The unit cannot do this: kaiachain/kaia build/rpm/etc/systemd/system/kpnd.service (kcnd.service alike)
        is ``Type=forking`` with ``ExecStop=/etc/init.d/kpnd stop``, and that script's ``stop_node`` runs
        ``killproc -p ${pidfile} -d ${STOP_TIMEOUT} $kpn`` (build/rpm/etc/init.d/kpnd, where
        ``STOP_TIMEOUT=${STOP_TIMEOUT-10}``): SIGTERM, then SIGKILL after STOP_TIMEOUT, so a flush longer than 10 s
        is killed. ``systemctl kill`` signals the unit's processes without its ExecStop; once the node has exited,
        ``systemctl stop`` only settles the unit (pid and lock files). Past ``limit`` the node is left to finish its
        flush: ``exited`` is False. Assumes systemd tracks kpn as the unit's main process (AUTO_RESTART_NODE=0): with
        the init script's auto-restart daemon as main process, its exit would run ExecStop, whose killproc kills."""
        service = self.node.service
        started = time.time()
        self.run(f"sudo systemctl kill --signal=SIGTERM {service}")
        wait = f'while [ "$(systemctl is-active {service})" = active ]; do sleep 0.5; done'
        rc = self.run(f"timeout {max(1, round(limit))} sh -c {shlex.quote(wait)}", timeout=limit + 60, check=False).rc
        exited = rc == 0
        if exited:
            self.run(f"sudo systemctl stop {service}", timeout=120)
        tail = self.log_tail()
        return {"exited": exited, "clean": exited and shutdown_was_clean(tail),
                "stop_seconds": round(time.time() - started, 2), "log_tail": "\n".join(tail.splitlines()[-5:])}

    def wait_exited(self, limit: float) -> bool:
        """Wait up to ``limit`` seconds while the node is still flushing after a SIGTERM (never a kill). True once
        it is not in that state: exited, or running normally."""
        deadline = time.time() + limit
        while self.service_state() == "active" and shutting_down(self.log_tail(50)):
            if time.time() >= deadline:
                return False
            time.sleep(1)
        return True

    def set_autostart(self, enabled: bool) -> None:
        self.run(f"sudo systemctl {'enable' if enabled else 'disable'} {self.node.service}")

    def version(self) -> str:
        out = self.run(f"{self.node.binary} version").stdout
        for line in out.splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
        raise NodeCommandError(f"{self.node.name}: `{self.node.binary} version` printed no Version line")

    # ----- key files -------------------------------------------------------------------------------------------
    def key_paths(self, name: str) -> list[str]:
        """Where the node looks for ``name``, in its order: DATA_DIR first, then DATA_DIR/klay."""
        return [f"{self.node.data_dir}/{name}", f"{self.node.data_dir}/klay/{name}"]

    def existing(self, paths: list[str]) -> list[str]:
        script = "; ".join(f"test -e {shlex.quote(p)} && echo {shlex.quote(p)}" for p in paths) + "; true"
        return self.run(f"sudo sh -c {shlex.quote(script)}").stdout.split()

    def read_key(self, name: str) -> tuple[NodeKey | BlsKey | None, str | None]:
        """The key the node would actually use (path precedence), and where it is; (None, None) if absent."""
        # One round trip: the first existing path on a line of its own, then its content.
        script = "; ".join(f"if [ -e {shlex.quote(p)} ]; then echo {shlex.quote(p)}; cat {shlex.quote(p)}; exit 0; fi"
                           for p in self.key_paths(name))
        out = self.run(f"sudo sh -c {shlex.quote(script)}", secret_output=True).stdout
        if not out:
            return None, None
        path, _, raw = out.partition("\n")
        try:
            return (NodeKey(raw) if name == "nodekey" else BlsKey(raw)), path
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"{self.node.name}:{path}: {exc}") from None

    def write_key(self, path: str, key: NodeKey | BlsKey) -> None:
        """Atomically write a key file, mode 0600, the value on stdin only."""
        self.write_file(path, key.reveal() + "\n", secret=True)

    def write_file(self, path: str, text: str, *, secret: bool = False) -> None:
        """Atomically replace a file (a reader sees the old one or the new one), the content on stdin only; a
        ``secret`` one is mode 0600 and kept out of errors."""
        tmp = shlex.quote(f"{path}.kaia-ha.tmp")
        mode = f"umask 077 && cat > {tmp} && chmod 600 {tmp}" if secret else f"cat > {tmp}"
        script = f"{mode} && sync {tmp} && mv -f {tmp} {shlex.quote(path)}"
        self.run(f"sudo sh -c {shlex.quote(script)}", stdin=text, secret_output=secret)
