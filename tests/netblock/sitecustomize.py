"""Loaded by every Python process of a test scan (PYTHONPATH): any attempt to reach a host other than
this machine is logged to $YOLOPROF_TEST_NETLOG and fails. torchrun and gloo rendezvous on loopback."""

import os
import socket

_LOG = os.environ.get("YOLOPROF_TEST_NETLOG")
_LOCAL = {"", "localhost", "0.0.0.0", "::", "::1", socket.gethostname()}
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _local(host) -> bool:
    host = str(host)
    return host in _LOCAL or host.startswith("127.")


def _blocked(what: str):
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {what}\n")
    return OSError(f"network blocked by the test: {what}")


def connect(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        raise _blocked(f"connect {address}")
    return _connect(self, address)


def connect_ex(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        _blocked(f"connect_ex {address}")
        return 111
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host is not None and not _local(host):
        raise socket.gaierror(f"blocked lookup of {host} ({_blocked(f'getaddrinfo {host}')})")
    return _getaddrinfo(host, *args, **kwargs)


if _LOG:
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
