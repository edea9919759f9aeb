"""The worst-case number of Postgres connections each service opens: the one formula that
``kbingest doctor``, the deployment tests (tests/unit/infrastructure) and the table in docs/deploy.md §6
all use. Three hand-kept copies once disagreed and a production overlay passed its guard while its
real peak did not fit (issue 14), so a new dedicated session is added here or nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

from shared.settings import Settings

SERVICES: Final = ("api", "relay", "processor", "reconciler")
# Kept free on top of the services' peak: superuser_reserved_connections (3), a migration, an operator's psql.
CONNECTION_HEADROOM: Final = 5
# The reconciler's work runs on one NullPool connection beside its leader session.
RECONCILER_WORK_CONNECTIONS: Final = 1


@dataclass(frozen=True)
class EnvLimits:
    """The limits a deployment's environment sets (``limits_from_env``): the ``Settings`` fields the formula reads."""

    db_pool_size: int
    db_max_overflow: int
    db_max_connections: int


# The settings the formula reads (a deployment spells them KBINGEST_DB_POOL_SIZE, …).
LIMIT_SETTINGS: Final = tuple(f.name for f in fields(EnvLimits))

# What the budget reads them from: a running service's Settings, or a deployment's environment.
DbLimits = Settings | EnvLimits


@dataclass(frozen=True)
class ServiceConnections:
    """One replica's ceiling: its pool (and the setting that sizes it) plus its dedicated sessions."""

    pool: int
    pool_setting: str  # the settings that size the pool (``DB_…``), or how many it holds when fixed
    sessions: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return self.pool + sum(n for _, n in self.sessions)


def connection_budget(settings: DbLimits) -> dict[str, ServiceConnections]:
    """Worst-case connections of one replica of each service."""
    worker = settings.db_max_connections
    return {
        "api": ServiceConnections(
            settings.db_pool_size + settings.db_max_overflow,
            "DB_POOL_SIZE + DB_MAX_OVERFLOW",
            (("the SSE LISTEN session", 1),),
        ),
        "relay": ServiceConnections(worker, "DB_MAX_CONNECTIONS", (("the LISTEN session", 1),)),
        "processor": ServiceConnections(
            worker, "DB_MAX_CONNECTIONS", (("the heartbeat connection", 1), ("the presence lock's session", 1))
        ),
        "reconciler": ServiceConnections(
            RECONCILER_WORK_CONNECTIONS, f"{RECONCILER_WORK_CONNECTIONS} (its work)", (("the leader lock session", 1),)
        ),
    }


def peak_connections(settings: DbLimits, replicas: Mapping[str, int]) -> int:
    """Connections of ``replicas`` (service name → count, e.g. at the HPA maximum plus a surge pod)."""
    budget = connection_budget(settings)
    unknown = set(replicas) - set(budget)
    if unknown:
        raise ValueError(f"no connection budget for {sorted(unknown)}")
    return sum(budget[name].total * count for name, count in replicas.items())


def limits_from_env(env: Mapping[str, str]) -> EnvLimits:
    """The limits a deployment's ``KBINGEST_*`` environment sets; an unset one takes Settings' default."""
    declared, prefix = Settings.model_fields, Settings.model_config.get("env_prefix", "")

    def value(name: str) -> int:
        raw = env.get(f"{prefix}{name}".upper())
        default = declared[name].default
        assert isinstance(default, int)
        return int(raw) if raw else default

    return EnvLimits(**{name: value(name) for name in LIMIT_SETTINGS})
