"""Stream a multipart body to temp files, hashing and counting as it goes (bounded memory)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from shared.errors import ApiError

HEAD_BYTES: Final = 8192
MAX_FIELD_BYTES: Final = 64 * 1024
# Non-file fields (``priority`` today): their count and total size are what the form may hold in memory.
MAX_FORM_FIELDS: Final = 32
MAX_FORM_BYTES: Final = 64 * 1024
MULTIPART_OVERHEAD_BYTES: Final = 64 * 1024


@dataclass
class ReceivedFile:
    field_name: str
    filename: str
    path: Path
    size: int = 0
    too_large: bool = False
    head: bytes = b""
    sha256: str = ""


@dataclass
class ReceivedForm:
    tmp_dir: Path
    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class _Collector:
    """Callbacks for python-multipart: one temp file per file part, small fields in memory."""

    def __init__(self, form: ReceivedForm, *, max_file_bytes: int, max_files: int, fail_fast: bool) -> None:
        self.form = form
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.fail_fast = fail_fast
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._file: ReceivedFile | None = None
        self._handle: IO[bytes] | None = None
        self._hasher = hashlib.sha256()
        self._field_name: str | None = None
        self._field_value = bytearray()
        self._field_count = 0
        self._field_bytes = 0

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        raw_filename = options.get(b"filename")
        if raw_filename is None:
            self._field_count += 1
            if self._field_count > MAX_FORM_FIELDS:
                raise body_too_large(f"at most {MAX_FORM_FIELDS} form fields besides files", max_fields=MAX_FORM_FIELDS)
            self._field_name, self._field_value = name, bytearray()
            return
        if len(self.form.files) >= self.max_files:
            raise ApiError(413, "too_many_files", f"at most {self.max_files} files per request")
        path = self.form.tmp_dir / f"part-{len(self.form.files)}"
        self._file = ReceivedFile(field_name=name, filename=raw_filename.decode("utf-8", errors="replace"), path=path)
        self._handle = path.open("wb")
        self._hasher = hashlib.sha256()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is None:
            if len(self._field_value) + len(chunk) > MAX_FIELD_BYTES:
                raise ApiError(413, "field_too_large", f"form field '{self._field_name}' is too large")
            self._field_bytes += len(chunk)
            if self._field_bytes > MAX_FORM_BYTES:
                raise body_too_large(
                    f"form fields besides files total over {MAX_FORM_BYTES} bytes", max_field_bytes=MAX_FORM_BYTES
                )
            self._field_value += chunk
            return
        current = self._file
        current.size += len(chunk)
        if current.too_large:
            return
        if current.size > self.max_file_bytes:
            current.too_large = True
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            current.path.unlink(missing_ok=True)
            if self.fail_fast:
                raise ApiError(
                    413,
                    "file_too_large",
                    f"file exceeds the limit of {self.max_file_bytes} bytes",
                    {"max_bytes": self.max_file_bytes},
                )
            return
        if len(current.head) < HEAD_BYTES:
            current.head += chunk[: HEAD_BYTES - len(current.head)]
        self._hasher.update(chunk)
        assert self._handle is not None
        self._handle.write(chunk)

    def on_part_end(self) -> None:
        if self._file is not None:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            self._file.sha256 = self._hasher.hexdigest()
            self.form.files.append(self._file)
            self._file = None
        elif self._field_name is not None:
            self.form.fields[self._field_name] = self._field_value.decode("utf-8", errors="replace")
            self._field_name = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def body_too_large(message: str, **limits: int) -> ApiError:
    return ApiError(413, "body_too_large", message, dict(limits))


def default_body_limit(*, max_file_bytes: int, max_files: int) -> int:
    """The most a well-formed request may send: its files at their limit, the form fields, the framing."""
    return max_files * max_file_bytes + MAX_FORM_BYTES + MULTIPART_OVERHEAD_BYTES


async def receive_multipart(
    request: Request,
    *,
    max_file_bytes: int,
    max_files: int,
    fail_fast: bool,
    max_body_bytes: int | None = None,
    tmp_root: Path | None = None,
) -> ReceivedForm:
    """Read the body once; 413 as soon as a file passes ``max_file_bytes`` when ``fail_fast``, and
    whatever ``fail_fast`` says, as soon as the body passes ``max_body_bytes``, the form holds too many
    fields or too many files: the rest of the body is never read."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(422, "validation_error", "expected a multipart/form-data body with a 'file' field")
    body_limit = (
        max_body_bytes
        if max_body_bytes is not None
        else default_body_limit(max_file_bytes=max_file_bytes, max_files=max_files)
    )
    declared_header = request.headers.get("content-length")
    declared = int(declared_header) if declared_header and declared_header.isdigit() else None
    if fail_fast and declared is not None and declared > max_file_bytes + MULTIPART_OVERHEAD_BYTES:
        raise ApiError(
            413, "file_too_large", f"file exceeds the limit of {max_file_bytes} bytes", {"max_bytes": max_file_bytes}
        )
    if declared is not None and declared > body_limit:
        raise body_too_large(f"the request body is over {body_limit} bytes", max_bytes=body_limit)
    form = ReceivedForm(tmp_dir=Path(tempfile.mkdtemp(prefix="kbingest-upload-", dir=tmp_root)))
    collector = _Collector(form, max_file_bytes=max_file_bytes, max_files=max_files, fail_fast=fail_fast)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": collector.on_part_begin,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise body_too_large(f"the request body is over {body_limit} bytes", max_bytes=body_limit)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        collector.close()
        form.cleanup()
        raise ApiError(422, "validation_error", f"malformed multipart body: {exc}") from exc
    except BaseException:
        collector.close()
        form.cleanup()
        raise
    return form
