"""API keys, roles and tenants. Until keys are configured the gateway runs open."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["client", "operator"]


@dataclass(frozen=True)
class Principal:
    role: Role
    tenant: str

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def tenant_scope(self) -> str | None:
        """The tenant this principal is confined to; None means every tenant."""
        return None if self.is_operator else self.tenant


OPEN_ACCESS = Principal(role="operator", tenant="default")
