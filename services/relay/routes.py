"""Routes: event-type patterns (fnmatch style, ``document.*``) to subscribers (a URL, or an any-of group of URLs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase


class Router:
    """Which subscribers get an event type.

    ``None``: no pattern matches, the event is unroutable (parked). ``()``: a pattern matches with an
    empty URL list, meaning "known, nobody needs it" (settled as delivered without a request).
    """

    def __init__(self, routes: Mapping[str, Sequence[str]]) -> None:
        self._routes = {pattern: tuple(urls) for pattern, urls in routes.items()}
        self._cache: dict[str, tuple[str, ...] | None] = {}

    @property
    def subscribers(self) -> tuple[str, ...]:
        """Every configured subscriber (a group counts once, by its name), in configuration order."""
        return tuple(dict.fromkeys(url for urls in self._routes.values() for url in urls))

    def targets(self, event_type: str) -> tuple[str, ...] | None:
        """Subscribers of every pattern matching ``event_type`` (deduplicated, configuration order), or None."""
        if event_type in self._cache:
            return self._cache[event_type]
        matched = [urls for pattern, urls in self._routes.items() if fnmatchcase(event_type, pattern)]
        targets = tuple(dict.fromkeys(url for urls in matched for url in urls)) if matched else None
        # Event types are a small closed set, so the cache stays small.
        self._cache[event_type] = targets
        return targets
