"""The simulated hosts' network tools a bare-metal failover relies on, and SSH faults aimed at one command."""

from __future__ import annotations


def test_duplicate_address_detection_sees_the_holder_of_the_floating_ip(cell):
    assert cell.ssh("cn-metal-b", "sudo arping -D -c 2 -w 3 -I eth0 10.50.0.100", check=False).returncode == 1
    assert cell.ssh("cn-metal-a", "sudo arping -D -c 2 -w 3 -I eth0 10.50.0.100", check=False).returncode == 0  # itself
    assert cell.ssh("cn-metal-b", "sudo arping -D -c 2 -w 3 -I eth0 10.50.0.199", check=False).returncode == 0


def test_a_route_can_only_take_a_local_source_address(cell):
    bad = cell.ssh("cn-metal-b", "sudo ip route replace default via 10.50.0.1 dev eth0 src 10.50.0.100", check=False)
    assert bad.returncode == 2 and "Invalid prefsrc address" in bad.stderr
    assert ["replace", "default", "via", "10.50.0.1", "dev", "eth0", "src", "10.50.0.100"] in [
        r["args"] for r in cell.status()["routes"] if r["host"] == "cn-metal-a"]


def test_an_ssh_fault_can_hit_one_command_before_or_after_it_runs(cell):
    cell.fault("ssh:pn-metal-1", "--kind", "drop-after", "--match", "touch /var/kpnd/drill")
    cell.fault("ssh:pn-metal-1", "--kind", "drop", "--match", "echo second")
    try:
        assert cell.ssh("pn-metal-1", "true", check=False).returncode == 0  # not matched: untouched
        assert cell.ssh("pn-metal-1", "touch /var/kpnd/drill", check=False).returncode == 255  # ran, answer lost
        assert cell.ssh("pn-metal-1", "ls /var/kpnd/drill", check=False).returncode == 0
        assert cell.ssh("pn-metal-1", "echo second > /var/kpnd/drill", check=False).returncode == 255  # dropped before
        assert cell.ssh("pn-metal-1", "cat /var/kpnd/drill").stdout == ""
        assert cell.status()["pending_faults"]["ssh"] == {}
    finally:
        cell.ssh("pn-metal-1", "rm -f /var/kpnd/drill")
