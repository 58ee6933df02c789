"""Outbound requests the server makes for its clients (image URLs, webhooks), safe against SSRF.

Convenience re-exports; code inside server/ imports from the defining module.
"""

from server.egress.allowlist import HostRule, IPNetwork, normalize_host, parse_host_name, parse_host_rule
from server.egress.fetch import (
    AddressPolicy,
    FetchError,
    IPAddress,
    address_problem,
    check_url,
    fetch_bytes,
    load_image_source,
    post_json,
)

__all__ = [
    "AddressPolicy",
    "FetchError",
    "HostRule",
    "IPAddress",
    "IPNetwork",
    "address_problem",
    "check_url",
    "fetch_bytes",
    "load_image_source",
    "normalize_host",
    "parse_host_name",
    "parse_host_rule",
    "post_json",
]
