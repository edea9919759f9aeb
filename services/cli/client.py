"""The user commands' HTTP client: the public API only (CONTRACT.md), its errors in plain words."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx
import typer

from services.cli import messages

KEY_FILE = Path(".kbingest") / "api_key"
TIMEOUT = httpx.Timeout(60.0, connect=5.0)
LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=8)
PAGE_SIZE = 200


class CliError(Exception):
    """Something the user must fix or know; printed without a traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class SentFile:
    """A local file sent as a document's content: the name the server is told, progress, the request's key."""

    path: Path
    name: str
    on_bytes: Callable[[int], None]
    idempotency_key: str | None = None


@dataclass
class ApiProblem(Exception):
    """An ``{"error": {...}}`` answer of the API."""

    status: int
    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiProblem:
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            return cls(response.status_code, f"http_{response.status_code}", response.reason_phrase or "error")
        extra = {k: v for k, v in error.items() if k not in ("code", "message")}
        return cls(response.status_code, error["code"], str(error.get("message", "")), extra)

    @property
    def route_missing(self) -> bool:
        """The server has no such route (an older server), as opposed to a missing entity."""
        return (self.status == 404 and self.message == "Not Found") or self.status == 405

    def plain(self) -> str:
        return messages.plain_words(self.code, self.message, self.extra)


def resolve_api_key(explicit: str | None, *, cwd: Path | None = None) -> str:
    """--api-key / KBINGEST_API_KEY, else the local stack's key file; an error says where to get one."""
    if explicit and explicit.strip():
        return explicit.strip()
    candidates = [(cwd or Path.cwd()) / KEY_FILE]
    if os.environ.get("KBINGEST_DATA_DIR"):
        candidates.insert(0, Path(os.environ["KBINGEST_DATA_DIR"]) / "api_key")
    for path in candidates:
        if path.is_file():
            key = path.read_text().strip()
            if key:
                return key
    raise CliError(
        "no API key: pass --api-key, set KBINGEST_API_KEY, or run from the checkout whose "
        f"{KEY_FILE} the local stack wrote (`kbingest keys create` makes keys)",
        exit_code=2,
    )


class _CountingReader:
    """A binary file that reports how many bytes were read, for upload progress bars."""

    def __init__(self, file: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self._file = file
        self._on_bytes = on_bytes

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._on_bytes(len(chunk))
        return chunk

    def fileno(self) -> int:
        return self._file.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


class Client:
    """A small synchronous client of the public API; errors raise ``ApiProblem`` or ``CliError``."""

    def __init__(self, base_url: str, api_key: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=TIMEOUT,
            limits=LIMITS,
            transport=transport,
        )
        messages.use_server(self.base_url, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CliError(f"the kbingest API at {self.base_url} did not answer in time ({exc})") from exc
        except httpx.TransportError as exc:
            raise CliError(
                f"can't reach the kbingest API at {self.base_url} ({exc}); is `kbingest up` running? "
                "(set --url or KBINGEST_URL)"
            ) from exc
        if response.status_code >= 400:
            raise ApiProblem.from_response(response)
        return response.json() if response.content else None

    def list_kbs(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/knowledge-bases")["items"])

    def get_kb(self, kb_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/knowledge-bases/{kb_id}"))

    def resolve_kb(self, name: str, *, create: bool = False, missing_exit: int = 1) -> dict[str, Any]:
        """The KB called ``name`` (made first with ``create``); an error lists the names there are."""
        kbs = self.list_kbs()
        for kb in kbs:
            if kb["name"] == name:
                return kb
        if not create:
            known = ", ".join(sorted(kb["name"] for kb in kbs)) or "none yet"
            raise CliError(
                f"no knowledge base named '{name}' (there are: {known}); --create makes it", exit_code=missing_exit
            )
        try:
            return dict(self.request("POST", "/v1/knowledge-bases", json={"name": name}))
        except ApiProblem as problem:
            if problem.code == "duplicate_name" and problem.extra.get("knowledge_base_id"):
                return self.get_kb(str(problem.extra["knowledge_base_id"]))
            raise

    def iter_documents(self, kb_id: str, *, status: str | None = None) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE}
            if status:
                params["status"] = status
            if cursor:
                params["cursor"] = cursor
            page = self.request("GET", f"/v1/knowledge-bases/{kb_id}/documents", params=params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def get_document(self, document_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/documents/{document_id}"))

    def upload(self, kb_id: str, path: Path, on_bytes: Callable[[int], None]) -> dict[str, Any]:
        return self.upload_named(kb_id, SentFile(path, path.name, on_bytes))

    def upload_named(self, kb_id: str, file: SentFile) -> dict[str, Any]:
        """Upload ``file`` under its ``name`` (the server keeps its last component as the document name)."""
        return dict(self._send_file("POST", f"/v1/knowledge-bases/{kb_id}/documents", file))

    def replace_content(self, document_id: str, file: SentFile) -> dict[str, Any]:
        """New content for a document, processed beside the current one (200 when identical: a no-op)."""
        return dict(self._send_file("PUT", f"/v1/documents/{document_id}/content", file))

    def delete_document(self, document_id: str) -> None:
        self.request("DELETE", f"/v1/documents/{document_id}")

    def list_versions(self, document_id: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/v1/documents/{document_id}/versions")["items"])

    def _send_file(self, method: str, url: str, file: SentFile) -> Any:
        headers = {"Idempotency-Key": file.idempotency_key} if file.idempotency_key else {}
        with file.path.open("rb") as content:
            files = {"file": (file.name, _CountingReader(content, file.on_bytes), "application/octet-stream")}
            return self.request(method, url, files=files, headers=headers)

    def search(self, kb_id: str, query: str, limit: int) -> list[dict[str, Any]]:
        body = self.request("POST", f"/v1/knowledge-bases/{kb_id}/search", json={"query": query, "limit": limit})
        return list(body["items"])


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn API and usage problems into one red line on stderr and an exit code, not a traceback."""
    try:
        yield
    except ApiProblem as problem:
        typer.secho(f"kbingest: {problem.plain()} [{problem.code}]", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from problem
    except CliError as error:
        typer.secho(f"kbingest: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(error.exit_code) from error


def connect(url: str, api_key: str | None) -> Client:
    return Client(url, resolve_api_key(api_key))
