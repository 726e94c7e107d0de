"""A bare-metal cell's floating IP: where it is configured, taking it off a host, putting it on one.

The site's own commands (``FloatingIP.command``) do the work; here is only what every caller needs the same way:
the failover moves it, the enrolment and the readiness check release it from a host that must not hold it.
"""

from __future__ import annotations

import re
import shlex

from kaia_ha.model.inventory import FloatingIP
from kaia_ha.takeover import TakeoverError
from kaia_ha_airflow.hooks.kaia_node import KaiaNodeHook


def ip_configured(ip_addr_show: str, fip: FloatingIP) -> bool:
    """Whether ``ip -4 addr show`` output lists the floating IP."""
    return re.search(rf"\binet {re.escape(fip.ip)}/", ip_addr_show) is not None


def holds_ip(node: KaiaNodeHook, fip: FloatingIP) -> bool:
    """Whether the floating IP is configured on this host's interface (``ip addr show``)."""
    return ip_configured(node.run(f"ip -4 addr show dev {shlex.quote(fip.interface)}").stdout, fip)


def release_floating_ip(node: KaiaNodeHook, fip: FloatingIP) -> str:
    """Take the floating IP off a host (the source route first: the kernel drops a route whose source goes)."""
    if not holds_ip(node, fip):
        return "was not configured there"
    node.run(" && ".join(([fip.command("unsource")] if fip.gateway else []) + [fip.command("del")]))
    if holds_ip(node, fip):
        raise TakeoverError(f"{node.node.name}: {fip.ip} is still configured after `{fip.command('del')}`")
    return "released"


def ip_answered_elsewhere(node: KaiaNodeHook, fip: FloatingIP) -> bool:
    """Duplicate address detection from ``node`` (which must not hold the IP itself): does another host
    still answer ARP for the floating IP?"""
    if not fip.check_free_cmd:
        return False
    return node.run(fip.command("check_free"), check=False, timeout=30).rc != 0


def take_floating_ip(node: KaiaNodeHook, fip: FloatingIP) -> list[str]:
    """Configure the floating IP on this host (unless it is there already), announce it (gratuitous ARP), make it
    the source of outbound connections when the inventory names a gateway; what was done. Safe to repeat."""
    done = []
    if not holds_ip(node, fip):
        if ip_answered_elsewhere(node, fip):
            raise TakeoverError(f"another host answers ARP for {fip.ip}: not taking the address (fencing did not hold)")
        added = node.run(fip.command("add"), check=False)  # "exists" after a dropped answer: judged by the check below
        if not holds_ip(node, fip):
            raise TakeoverError(f"{node.node.name}: `{fip.command('add')}` exited {added.rc}: "
                                f"{added.stderr.strip()[-300:]}")
        done.append("added")
    # Announce (the neighbours' ARP caches still point at the old holder) and, with a gateway, make the
    # floating IP the source of outbound connections. Both are safe to repeat.
    node.run(" && ".join([fip.command("announce")] + ([fip.command("source")] if fip.gateway else [])))
    return done + ["announced"] + ([f"outbound source via {fip.gateway}"] if fip.gateway else [])
