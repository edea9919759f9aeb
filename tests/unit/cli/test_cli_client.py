"""The user CLI's client: API errors in plain words, key discovery, KB resolution, file collection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli import client as c
from services.cli import messages
from services.cli.upload import collect_files
from shared.errors import ErrorCode


def _error(http_status: int, code: str, message: str = "server text", **extra: Any) -> httpx.Response:
    return httpx.Response(http_status, json={"error": {"code": code, "message": message, **extra}})


@pytest.mark.parametrize(
    ("code", "extra", "expected"),
    [
        ("invalid_api_key", {}, "the API key was refused (unknown or revoked)"),
        ("unauthorized", {}, "no API key was sent: pass --api-key or set KBINGEST_API_KEY"),
        (
            "duplicate_document",
            {"status": "ready"},
            "already uploaded: a document with this name is already in this knowledge base (ready)",
        ),
        ("duplicate_content", {}, "already uploaded: the same content is already in this knowledge base (existing)"),
        ("file_too_large", {"max_bytes": 100 * 1024 * 1024}, "too large: the server accepts files up to 100 MB"),
        ("file_too_large", {}, "too large: the server accepts files up to its limit"),
        ("empty_file", {}, "the file is empty (0 bytes)"),
        ("validation_error", {}, "the request was refused: server text"),
        ("storage_unavailable", {}, "the server's file storage is unavailable; nothing was stored; try again shortly"),
        ("some_future_code", {}, "server text"),
    ],
)
def test_api_errors_in_plain_words(code: str, extra: dict[str, Any], expected: str) -> None:
    assert c.ApiProblem.from_response(_error(400, code, **extra)).plain() == expected


def test_unsupported_media_type_names_what_is_supported() -> None:
    words = messages.plain_words("unsupported_media_type", "audio/wav is not supported")
    assert words.startswith("unsupported file type") and "PDF" in words and "Markdown" in words


def test_every_document_error_code_has_words_from_the_server(catalogue_server: list[str]) -> None:
    assert all(messages.failure_words(code.value) for code in ErrorCode)
    assert messages.failure_words("pdf_encrypted") == "the PDF is password-protected"
    assert messages.failure_words("unknown") == ""
    assert catalogue_server == ["/v1/errors"], "fetched once, then kept"


def test_without_the_catalogue_the_server_text_is_shown() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    messages.use_server("http://kbingest.test", transport=httpx.MockTransport(down))
    assert c.ApiProblem.from_response(_error(400, "invalid_api_key", "key refused")).plain() == "key refused"
    assert messages.failure_words("pdf_encrypted") == ""


def test_non_json_error_keeps_the_status() -> None:
    problem = c.ApiProblem.from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert (problem.status, problem.code, problem.plain()) == (502, "http_502", "Bad Gateway")


def test_route_missing_tells_an_old_server_from_a_missing_thing() -> None:
    assert c.ApiProblem.from_response(_error(404, "not_found", "Not Found")).route_missing
    assert not c.ApiProblem.from_response(_error(404, "not_found", "knowledge base not found")).route_missing


def test_sizes_for_people() -> None:
    assert [messages.human_size(n) for n in (0, 900, 2048, 15 * 1024 * 1024, 3 * 1024**3)] == [
        "0 B",
        "900 B",
        "2.0 KB",
        "15 MB",
        "3.0 GB",
    ]


def test_api_key_from_option_then_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBINGEST_DATA_DIR", raising=False)
    assert c.resolve_api_key("  kbi_given ", cwd=tmp_path) == "kbi_given"
    with pytest.raises(c.CliError, match="no API key") as missing:
        c.resolve_api_key(None, cwd=tmp_path)
    assert missing.value.exit_code == 2
    (tmp_path / ".kbingest").mkdir()
    (tmp_path / ".kbingest" / "api_key").write_text("kbi_from_file\n")
    assert c.resolve_api_key(None, cwd=tmp_path) == "kbi_from_file"
    data_dir = tmp_path / "elsewhere"
    data_dir.mkdir()
    (data_dir / "api_key").write_text("kbi_from_data_dir")
    monkeypatch.setenv("KBINGEST_DATA_DIR", str(data_dir))
    assert c.resolve_api_key("", cwd=tmp_path) == "kbi_from_data_dir"


def _client(handler: Any) -> c.Client:
    return c.Client("http://api.test/", "kbi_k", transport=httpx.MockTransport(handler))


def test_resolve_kb_by_name_create_and_lost_race() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        assert request.headers["authorization"] == "Bearer kbi_k"
        if request.method == "GET" and request.url.path == "/v1/knowledge-bases":
            return httpx.Response(200, json={"items": [{"id": "kb-1", "name": "docs"}]})
        if request.method == "POST":
            assert json.loads(request.content) == {"name": "new"}
            return _error(409, "duplicate_name", "exists", knowledge_base_id="kb-2")
        return httpx.Response(200, json={"id": "kb-2", "name": "new"})

    with _client(handler) as client:
        assert client.resolve_kb("docs")["id"] == "kb-1"
        with pytest.raises(c.CliError, match=r"no knowledge base named 'new' \(there are: docs\); --create makes it"):
            client.resolve_kb("new")
        assert client.resolve_kb("new", create=True)["id"] == "kb-2"
    assert calls[-2:] == ["POST /v1/knowledge-bases", "GET /v1/knowledge-bases/kb-2"]


def test_documents_are_paged_until_no_cursor() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        if cursor is None:
            return httpx.Response(200, json={"items": [{"id": "a"}, {"id": "b"}], "next_cursor": "c1"})
        return httpx.Response(200, json={"items": [{"id": "c"}], "next_cursor": None})

    with _client(handler) as client:
        assert [d["id"] for d in client.iter_documents("kb")] == ["a", "b", "c"]


def test_upload_counts_bytes_and_unreachable_server_is_a_cli_error(tmp_path: Path) -> None:
    file = tmp_path / "notes.md"
    file.write_bytes(b"# notes\n" * 1000)
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        assert b'filename="notes.md"' in body and b"# notes" in body
        return httpx.Response(201, json={"id": "d1", "status": "queued"})

    with _client(handler) as client:
        assert client.upload("kb", file, seen.append)["id"] == "d1"
    assert sum(seen) == file.stat().st_size

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(down) as client, pytest.raises(c.CliError, match=r"can't reach the kbingest API at http://api\.test"):
        client.list_kbs()


def test_collect_files_recurses_skips_hidden_and_dedupes(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / ".git").mkdir()
    for name in ("a/one.pdf", "a/b/two.md", "a/.git/config", "a/.DS_Store", "top.txt"):
        (tmp_path / name).write_text("x")
    found = collect_files([tmp_path / "a", tmp_path / "a" / "one.pdf", tmp_path / "top.txt"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/b/two.md", "a/one.pdf", "top.txt"]
    with pytest.raises(c.CliError, match="no such file"):
        collect_files([tmp_path / "missing"])
