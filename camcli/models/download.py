"""Whether weights that are not in the cache can be downloaded now, answered within seconds.

On a machine without network (a cluster node, a CI runner with no egress) the hub clients
retry for up to a minute and print a dozen lines of their own before failing. Every model
source asks here first, once its cache has missed: with ``--offline`` (``CAMCLI_OFFLINE=1``)
or ``HF_HUB_OFFLINE=1`` no download is tried at all; otherwise one TCP connection to the
weights' host (or to the proxy the environment names for it) must open within
``CONNECT_TIMEOUT_S``. Only then does the source download, once, quietly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlsplit

OFFLINE_VARIABLES = ("CAMCLI_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
CONNECT_TIMEOUT_S = 3.0
HF_ENDPOINT = "https://huggingface.co"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason() -> str | None:
    """Why downloads are off (the variable that says so), or None."""
    for name in OFFLINE_VARIABLES:
        if _truthy(os.environ.get(name)):
            shown = "--offline" if name == "CAMCLI_OFFLINE" else f"{name}=1"
            return f"{shown} is set, so nothing is downloaded"
    return None


def _endpoint(url: str) -> tuple[str, int]:
    """The host and port a download of ``url`` connects to first: its proxy's, if any."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def _connect(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within ``timeout`` seconds, else why not.

    Name resolution has no timeout of its own (a resolver that never answers holds
    ``getaddrinfo`` for its full retry cycle), so the attempt runs in a daemon thread that is
    left behind when the time is up.
    """
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(str(exc) or type(exc).__name__)

    thread = threading.Thread(target=attempt, name="camcli-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer within {timeout:g} s"
    return outcome[0]


def unavailable_reason(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why a download from ``url`` cannot be tried now (offline, host unreachable), or None."""
    reason = offline_reason()
    if reason:
        return reason
    host, port = _endpoint(url)
    failure = _connect(host, port, timeout)
    if failure is None:
        return None
    return f"cannot reach {host}:{port}: {failure}"


def hf_endpoint() -> str:
    """The Hugging Face hub's address (``HF_ENDPOINT`` moves it, as it does for the hub)."""
    return os.environ.get("HF_ENDPOINT", HF_ENDPOINT)


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """The hub client's own warnings off (its "Retrying in 1s" lines): camcli says what failed."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)
