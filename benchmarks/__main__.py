"""``python -m benchmarks [--quick] [--only NAME ...]``: run every benchmark module's ``main()``.

Each module in this package that defines ``main(argv)`` is one benchmark; it prints its own
Markdown table(s). ``--quick`` is passed on to each. A failing benchmark is reported and the
others still run; the exit status says whether all passed.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
from collections.abc import Callable
from typing import Any

import benchmarks

SKIP = {"support"}


def discover() -> dict[str, Callable[[list[str]], Any]]:
    """Benchmark modules by name, in alphabetical order."""
    found: dict[str, Callable[[list[str]], Any]] = {}
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in SKIP:
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        entry = getattr(module, "main", None)
        if callable(entry):
            found[info.name] = entry
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs (passed to every benchmark)")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark module names to run")
    args = parser.parse_args()
    available = discover()
    names = args.only or list(available)
    unknown = sorted(set(names) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available)}")
    failed = []
    for name in names:
        print(f"# benchmark: {name}\n", flush=True)
        try:
            available[name](["--quick"] if args.quick else [])
        except Exception:
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
