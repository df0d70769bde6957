"""Who issues a command: a user name with the groups and roles identity gave it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """Who issues a command. ``groups`` decide candidate rights; ``roles`` come from identity."""

    name: str
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


SYSTEM = Actor("system", roles=frozenset({"system"}))
