"""A free TCP port, for a server or process group this process is about to start."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` ("" = every interface) that nothing listens on now. The OS picks it; another process
    can still take it before it is used, so callers bind it soon after."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
