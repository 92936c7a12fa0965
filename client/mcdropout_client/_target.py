"""Turning the user's target (one address, several, or a URI) into one gRPC target string."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

# Schemes gRPC resolves itself; such targets are passed through untouched.
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")

# round_robin opens a subchannel per resolved address and spreads calls over them; with one
# address it behaves like the default pick_first, so it is always on.
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def grpc_target(target: str | Sequence[str]) -> str:
    """Return the gRPC target for ``target``.

    Args:
        target: ``"host:port"``; a URI gRPC resolves (``"dns:///name:port"``, ``"ipv4:..."``,
            ``"unix:/path"``); or several ``"ip:port"`` addresses, as a list or one
            comma-separated string, which become one ``ipv4:``/``ipv6:`` target.

    Raises:
        ValueError: empty target, an address without a port, a host name in a list of
            addresses (use ``dns:///name:port`` for a name with several addresses), or a list
            that mixes IPv4 and IPv6.
    """
    if isinstance(target, str):
        if target.startswith(_SCHEMES) or "," not in target:
            if not target.strip():
                raise ValueError("target must be 'host:port' or a gRPC URI, got ''")
            return target.strip()
        target = target.split(",")
    addresses = [a.strip() for a in target if a.strip()]
    if not addresses:
        raise ValueError(f"target must name at least one address, got {list(target)!r}")
    if len(addresses) == 1:
        return grpc_target(addresses[0])
    parsed = [_ip_address(a) for a in addresses]
    families = {version for version, _ in parsed}
    if len(families) > 1:
        raise ValueError(f"target addresses mix IPv4 and IPv6, got {addresses}; use one family")
    scheme = "ipv4" if families == {4} else "ipv6"
    return f"{scheme}:" + ",".join(address for _, address in parsed)


def _ip_address(address: str) -> tuple[int, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be 'ip:port' with a port in 1..65535, got {address!r}")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"a list of addresses takes IP literals, got host {host!r} in {address!r}; "
            "for a name that resolves to several servers use 'dns:///name:port'"
        ) from None
    return ip.version, f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
