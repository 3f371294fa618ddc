"""Agent profiles from a TOML file (KEEL_AGENTS_FILE, default: the one shipped with Keel)."""

import tomllib
from pathlib import Path

from pydantic import ValidationError

from schemas.agents import AgentProfile

DEFAULT_AGENTS_FILE = Path(__file__).parent / "agents.toml"


class UnknownAgent(KeyError):
    pass


class AgentCatalog:
    """The agent profiles a deployment offers, by name."""

    def __init__(self, profiles: list[AgentProfile]) -> None:
        self._profiles = {profile.name: profile for profile in profiles}

    @classmethod
    def load(cls, path: Path | None = None) -> "AgentCatalog":
        """Read profiles from `path`; a malformed file raises ValueError naming the profile."""
        source = path or DEFAULT_AGENTS_FILE
        with source.open("rb") as file:
            tables = tomllib.load(file)
        profiles = []
        for name, table in tables.items():
            try:
                profiles.append(AgentProfile(name=name, **table))
            except ValidationError as exc:
                raise ValueError(f"agent profile {name!r} in {source}: {exc}") from exc
        return cls(profiles)

    def get(self, name: str) -> AgentProfile:
        try:
            return self._profiles[name]
        except KeyError:
            raise UnknownAgent(name) from None

    def all(self) -> list[AgentProfile]:
        return list(self._profiles.values())
