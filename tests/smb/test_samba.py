"""The private Samba stops every process it started, the helpers that leave its session too."""

from __future__ import annotations

from pathlib import Path

import pytest
from impacket.smbconnection import SMBConnection

from smbdirect_socket.smb.samba import samba_available, samba_processes, samba_server


def _name_and_session(pid: int) -> tuple[str, int] | None:
    """A process's name and session, or None once it has exited (the session's
    smbd may end between the listing and the reading)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return name, int(stat[stat.rindex(")") + 2 :].split()[3])


def test_samba_stops_its_rpc_helpers() -> None:
    reason = samba_available()
    if reason is not None:
        pytest.skip(reason)
    with samba_server() as samba:
        # Listing shares asks smbd for srvsvc, which starts samba-dcerpcd (in a
        # session of its own) and its rpcd_* workers.
        connection = SMBConnection(samba.host, samba.host, sess_port=samba.port, timeout=30)
        connection.login(samba.user, samba.password)
        assert samba.share in [share["shi1_netname"][:-1] for share in connection.listShares()]
        connection.logoff()
        connection.close()
        running = samba_processes(samba)
        alive = [found for found in map(_name_and_session, running) if found is not None]
        names = {name for name, _ in alive}
        assert {"smbd", "samba-dcerpcd"} <= names and any(name.startswith("rpcd_") for name in names)
        sessions = {session for _, session in alive}
        assert len(sessions) > 1
    assert samba_processes(samba) == []
    assert not [pid for pid in map(str, running) if Path(f"/proc/{pid}").exists()]
