"""API keys, roles and tenants.

Owns parsing the keys from settings (`API_KEYS` as comma-separated `key:role[:tenant]`,
or `API_KEYS_FILE`, a YAML list of `{key, role, tenant}`), holding them as SHA-256
digests only, and resolving a presented key to a `Principal` in constant time.
With no keys configured the gateway runs open: every caller is `OPEN_ACCESS`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast, get_args

import structlog
import yaml

from app.config import Settings, get_settings
from app.errors import Unauthorized

log = structlog.get_logger(__name__)

Role = Literal["client", "operator"]
ROLES: tuple[str, ...] = get_args(Role)
DEFAULT_TENANT = "default"
# Tenants are recorded on jobs (String(64)) and shown in logs; keep them tame.
_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MIN_KEY_LENGTH = 8


@dataclass(frozen=True)
class Principal:
    role: Role
    tenant: str
    # Which configured key this is (a digest prefix; None with open access): per-key
    # limits count by it.
    key_id: str | None = field(default=None, compare=False)

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def tenant_scope(self) -> str | None:
        """The tenant this principal is confined to; None means every tenant."""
        return None if self.is_operator else self.tenant


OPEN_ACCESS = Principal(role="operator", tenant=DEFAULT_TENANT)


class ApiKeyConfigError(ValueError):
    """A malformed key entry; the message says where it is and what is wrong."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Configured keys as digests; `resolve` compares against every one of them."""

    def __init__(self, entries: list[tuple[str, Principal]]) -> None:
        self._entries = [
            (digest(key), replace(principal, key_id=digest(key).hex()[:16]))
            for key, principal in entries
        ]

    @property
    def is_open(self) -> bool:
        return not self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, presented: str) -> Principal | None:
        """The principal owning `presented`, or None; time does not depend on which matched."""
        wanted = digest(presented)
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, wanted):
                found = principal
        return found


def _principal(role: object, tenant: object, where: str) -> Principal:
    if role not in ROLES:
        raise ApiKeyConfigError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if tenant is None or tenant == "":
        tenant = DEFAULT_TENANT
    if not isinstance(tenant, str) or len(tenant) > 64 or not set(tenant) <= _TENANT_CHARS:
        raise ApiKeyConfigError(
            f"{where}: tenant {tenant!r} must be 1-64 characters of letters, digits, '_.-'"
        )
    return Principal(role=cast(Role, role), tenant=tenant)


def _checked_key(key: object, where: str) -> str:
    if not isinstance(key, str) or len(key.strip()) < MIN_KEY_LENGTH:
        raise ApiKeyConfigError(f"{where}: key must be a string of at least {MIN_KEY_LENGTH} chars")
    return key.strip()


def parse_api_keys(raw: str) -> list[tuple[str, Principal]]:
    """`key:role[:tenant]` entries, comma-separated (the API_KEYS variable)."""
    entries = []
    for number, item in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not item:
            continue
        where = f"API_KEYS entry {number}"
        fields = item.split(":")
        if len(fields) not in (2, 3):
            raise ApiKeyConfigError(
                f"{where}: expected key:role[:tenant], got {len(fields)} fields"
            )
        tenant = fields[2] if len(fields) == 3 else None
        entries.append((_checked_key(fields[0], where), _principal(fields[1], tenant, where)))
    return entries


def load_api_keys_file(path: Path) -> list[tuple[str, Principal]]:
    """A YAML list of `{key, role, tenant}` mappings (the API_KEYS_FILE variable)."""
    try:
        document: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ApiKeyConfigError(f"API_KEYS_FILE {path}: cannot be read: {exc}") from exc
    if not isinstance(document, list):
        raise ApiKeyConfigError(f"API_KEYS_FILE {path}: expected a list of {{key, role, tenant}}")
    entries = []
    for index, item in enumerate(document):
        where = f"API_KEYS_FILE {path} item {index}"
        if not isinstance(item, dict):
            raise ApiKeyConfigError(f"{where}: expected a mapping with key, role and tenant")
        unknown = set(item) - {"key", "role", "tenant"}
        if unknown:
            raise ApiKeyConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        key = _checked_key(item.get("key"), where)
        entries.append((key, _principal(item.get("role"), item.get("tenant"), where)))
    return entries


def build_keyring(settings: Settings) -> KeyRing:
    entries = parse_api_keys(settings.api_keys)
    if settings.api_keys_file is not None:
        entries += load_api_keys_file(settings.api_keys_file)
    seen: set[bytes] = set()
    for key, _ in entries:
        if digest(key) in seen:
            raise ApiKeyConfigError("the same API key is configured twice")
        seen.add(digest(key))
    return KeyRing(entries)


@lru_cache
def get_keyring() -> KeyRing:
    return build_keyring(get_settings())


def announce_access_mode() -> None:
    """Log at start-up whether keys guard the API; an open gateway says so loudly."""
    keyring = get_keyring()
    if keyring.is_open:
        log.warning(
            "NO API KEYS CONFIGURED: the gateway is OPEN, every caller acts as an operator "
            "of every tenant. Set API_KEYS or API_KEYS_FILE before exposing it."
        )
    else:
        log.info("api keys loaded", keys=len(keyring))


def authenticate(presented: str | None) -> Principal:
    """The principal for a presented key; raises Unauthorized when keys guard the API."""
    keyring = get_keyring()
    if keyring.is_open:
        return OPEN_ACCESS
    if not presented:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            code="missing_api_key",
        )
    principal = keyring.resolve(presented)
    if principal is None:
        raise Unauthorized("unknown API key", code="invalid_api_key")
    return principal
