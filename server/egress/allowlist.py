"""The entries of ``input_images.allowed_hosts``: parsed once, matched per connection.

A host name (``images.internal``, ``*.corp.example``), an IP address or a network, each with an
optional port (IPv6 in brackets when a port follows); an entry without a port allows every port.
The syntax, entry by entry: docs/security.md.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

import httpx

__all__ = ["HostRule", "IPAddress", "IPNetwork", "normalize_host", "parse_host_name", "parse_host_rule"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_BRACKETED = re.compile(r"\[(?P<addr>[^\[\]]+)\](?P<prefix>/[0-9]+)?(?::(?P<port>[^:]*))?")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


def normalize_host(host: str) -> str:
    """Lower-case ASCII form, as httpx sends it (IDNA via httpx's own encoder), without a trailing dot."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if not host.isascii():
        try:
            host = httpx.URL(f"http://{host}/").raw_host.decode("ascii")
        except (httpx.InvalidURL, UnicodeError, ValueError):
            pass
    return host


def parse_host_name(text: str) -> str | None:
    """``name`` or ``*.domain`` as :func:`normalize_host` makes it (``*.domain`` as ``.domain``),
    or None if it is not one: labels of letters, digits, ``_`` and inner ``-``, at most 63 each.

    The one host-name grammar of the settings: ``input_images.allowed_hosts`` and
    ``server.allowed_hosts`` both read names with it.
    """
    labels = normalize_host(text).split(".")
    wildcard = labels[0] == "*"
    if wildcard:
        labels = labels[1:]
    if not labels or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    suffix = ".".join(labels)
    return f".{suffix}" if wildcard else suffix


@dataclass(frozen=True)
class HostRule:
    """One allow-list entry: a network (IP/CIDR entries) or a host name, and a port (None: every port)."""

    entry: str
    network: IPNetwork | None = None
    name: str | None = None  # "images.internal", or ".corp.example" for "*.corp.example"
    port: int | None = None

    def allows_port(self, port: int) -> bool:
        return self.port is None or self.port == port

    def covers_address(self, ip: IPAddress) -> bool:
        """True if this IP/CIDR entry covers ``ip`` (on some port)."""
        return self.network is not None and ip.version == self.network.version and ip in self.network

    def covers_name(self, host: str) -> bool:
        """True if this host-name entry covers the URL host ``host`` (on some port)."""
        if self.name is None:
            return False
        host = normalize_host(host)
        return host.endswith(self.name) if self.name.startswith(".") else host == self.name


def _canonical(net: IPNetwork) -> IPNetwork:
    """An IPv4-mapped IPv6 network (``::ffff:10.0.0.0/104``) as the IPv4 network it means."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _network(text: str) -> IPNetwork | None:
    try:
        return _canonical(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None


def _port(entry: str, text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535 (got {text!r})")
    return int(text)


def parse_host_rule(entry: str) -> HostRule:
    """Parse one ``allowed_hosts`` entry; ValueError naming the entry and what is wrong with it."""
    if not isinstance(entry, str):
        raise ValueError(f"{entry!r}: an entry must be a string")
    text = entry.strip()
    if not text:
        raise ValueError(f"{entry!r}: an entry is blank")
    if any(c.isspace() for c in text):
        raise ValueError(f"{entry!r}: an entry has no spaces (one host, host:port, IP or CIDR each)")
    if "://" in text or any(c in text for c in "?#@"):
        raise ValueError(f"{entry!r}: write a host, host:port, IP or CIDR, not a URL")
    if text.startswith("["):
        match = _BRACKETED.fullmatch(text)
        network = match and _network(match["addr"] + (match["prefix"] or ""))
        if not match or network is None or ":" not in match["addr"]:
            raise ValueError(
                f"{entry!r}: brackets hold an IPv6 address or network: [::1], [::1]:8080, [fd00::/8]:443"
            )
        port = None if match["port"] is None else _port(entry, match["port"])
        return HostRule(entry, network=network, port=port)
    if text.count(":") > 1:  # a bare IPv6 address or network: no port (it would be ambiguous)
        network = _network(text)
        if network is None:
            raise ValueError(f"{entry!r}: not an IPv6 address or network (with a port, write [address]:port)")
        return HostRule(entry, network=network)
    host, colon, port_text = text.partition(":")
    port = _port(entry, port_text) if colon else None
    if "/" in host:
        network = _network(host)
        if network is None:
            raise ValueError(f"{entry!r}: not a valid CIDR network (e.g. 10.0.0.0/8 or 10.0.0.0/8:443)")
        return HostRule(entry, network=network, port=port)
    network = _network(host)
    if network is not None:
        return HostRule(entry, network=network, port=port)
    name = normalize_host(host)
    labels = name.split(".")
    if all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        # 2130706433, 0x7f000001, 127.1: what the resolver (inet_aton) makes of the name.
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            raise ValueError(f"{entry!r}: not a valid IPv4 address") from None
        return HostRule(entry, network=ipaddress.IPv4Network(address), port=port)
    parsed = parse_host_name(name)
    if parsed is None:
        raise ValueError(
            f"{entry!r}: not a valid host name (e.g. images.internal, *.corp.example, images.internal:8080)"
        )
    return HostRule(entry, name=parsed, port=port)
