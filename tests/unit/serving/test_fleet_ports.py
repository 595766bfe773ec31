"""The fleet's ports, refused before anything starts: one another program holds, and one only root may take."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from tenfold.local import free_ports, local_settings
from tenfold.serving import fleet


def test_a_privileged_lb_port_is_refused_as_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES (a user's bind below ip_unprivileged_port_start; these tests run as root, so the kernel's refusal is
    raised where it would come) counted as free once port_in_use stopped calling it "in use": HAProxy failed later."""
    lb, replicas = free_ports(2)
    settings = local_settings(tmp_path, lb_port=lb, replica_base_port=replicas)
    real_bind = socket.socket.bind

    def bind(sock: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and address[1] == lb:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_bind(sock, address)

    monkeypatch.setattr(socket.socket, "bind", bind)
    (refusal,) = fleet._busy_ports(settings)
    assert refusal.startswith(f"port 127.0.0.1:{lb} (lb_port) is a privileged port: only root may listen below")
    assert refusal.endswith("or above with TENFOLD_LOCAL__LB_PORT")
