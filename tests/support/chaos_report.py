"""The campaign's one table: faults by kind, documents, lost, duplicated, orphaned, stuck, and how long the
pipeline took to flow again after each Postgres restart."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.support.chaos_checker import COLUMNS, Findings
from tests.support.chaos_faults import FaultRecord


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: with few samples p99 is the worst one, which is what a reader should see."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Report:
    seed: int
    duration_s: float
    wall_s: float
    faults: list[FaultRecord]
    findings: Findings
    monitor: dict[str, Any]
    ledger: dict[str, Any]
    harness_errors: list[str] = field(default_factory=list)

    def column(self, name: str) -> int:
        return self.findings.count(*COLUMNS[name])

    def pg_recovery(self) -> dict[str, float | None]:
        restarts = [f for f in self.faults if f.kind.startswith("postgres restart")]
        flow = [f.flow_s for f in restarts if f.flow_s is not None]
        ready = [f.ready_s for f in restarts if f.ready_s is not None]
        return {
            "restarts": len(restarts),
            "flow_p50": percentile(flow, 50),
            "flow_p99": percentile(flow, 99),
            "ready_p50": percentile(ready, 50),
            "ready_p99": percentile(ready, 99),
        }

    def table(self) -> str:
        kinds = Counter(f.kind for f in self.faults)
        pg = self.pg_recovery()
        stats = self.findings.stats
        dead_other = self.findings.count("dead letter that is no refusal")
        budget = self.monitor["budget"]
        peaks = self.monitor["peak_per_service"]
        rows = [
            ("seed", str(self.seed)),
            ("fault window / wall time", f"{self.duration_s:.0f} s / {self.wall_s:.0f} s"),
            ("faults injected", f"{len(self.faults)}: " + ", ".join(f"{k} ×{n}" for k, n in sorted(kinds.items()))),
            (
                "documents",
                f"{stats.get('documents', 0)} rows ({stats.get('accepted', 0)} answered 201), "
                + ", ".join(f"{k} {v}" for k, v in sorted(stats.get("statuses", {}).items())),
            ),
            ("failed by code", ", ".join(f"{k} {v}" for k, v in sorted(stats.get("failed_codes", {}).items())) or "—"),
            ("lost", str(self.column("lost"))),
            ("duplicated", str(self.column("duplicated"))),
            ("orphaned", str(self.column("orphaned"))),
            ("stuck", str(self.column("stuck"))),
            ("dead letters", f"{stats.get('dead_letters_expected', 0)} garbage refusals, {dead_other} other"),
            (
                "Postgres connections (peak / budget per process)",
                ", ".join(f"{name} {peaks.get(name, 0)}/{budget[_role(name)]}" for name in sorted(peaks))
                + f"; kbingest sessions peak {self.monitor['peak_sessions']}",
            ),
            ("services that exited by themselves", str(len(self.monitor["unexpected_exits"]))),
            ("searches checked", f"{self.ledger['searches']}, {len(self.ledger['search_violations'])} bad"),
            (
                "Postgres restart → flowing again p50 / p99",
                f"{_s(pg['flow_p50'])} / {_s(pg['flow_p99'])} over {pg['restarts']} restarts "
                f"(all /readyz 200: {_s(pg['ready_p50'])} / {_s(pg['ready_p99'])})",
            ),
            ("oldest due event (head of its document)", f"{self.monitor['max_lateness_s']:.0f} s"),
        ]
        lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        return "\n".join(lines)

    def violations(self) -> str:
        out = []
        for invariant, items in sorted(self.findings.items.items()):
            out.append(f"{invariant}: {len(items)}")
            out.extend(f"  - {item}" for item in items[:15])
        for exit_ in self.monitor["unexpected_exits"]:
            out.append(f"exited by itself: {exit_['service']} at {exit_['at_s']} s, code {exit_['returncode']}")
        out.extend(f"connections: {v}" for v in self.monitor["connection_violations"][:15])
        out.extend(f"harness: {e}" for e in self.harness_errors)
        return "\n".join(out)

    def fault_log(self) -> str:
        return "\n".join(
            f"{f.at_s:7.1f} s  {f.kind:<28} {f.target:<28} hold {f.hold_s:5.2f} s"
            + (f"  ready {f.ready_s} s, flowing {f.flow_s} s" if f.kind.startswith("postgres restart") else "")
            + (f"  ({f.note})" if f.note else "")
            for f in self.faults
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "duration_s": self.duration_s,
            "wall_s": self.wall_s,
            "faults": [asdict(f) for f in self.faults],
            "findings": dict(self.findings.items),
            "stats": self.findings.stats,
            "pg_recovery": self.pg_recovery(),
            "monitor": {k: v for k, v in self.monitor.items() if k != "unexpected_exits"}
            | {
                "unexpected_exits": [
                    {k: v for k, v in e.items() if k != "log"} for e in self.monitor["unexpected_exits"]
                ]
            },
            "ledger": self.ledger,
            "harness_errors": self.harness_errors,
        }


def _role(service: str) -> str:
    return "processor" if service.startswith("processor") else service


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"
