"""Free TCP ports on 127.0.0.1 for lab servers (sshd devices, the delay proxy, emulated Pis)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now (the kernel picks it; a race with others is unlikely)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
