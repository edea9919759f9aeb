"""Object store access (MinIO / S3 / nanio) behind a small async interface."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error

from shared.aio import wait_for
from shared.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


class StorageUnavailable(Exception):
    """The object store could not be reached or refused the operation."""


class ObjectMissing(Exception):
    """The object does not exist."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    last_modified: datetime | None


def object_key(knowledge_base_id: object, document_id: object) -> str:
    """Where a document's original lives; derived from ids so orphans can be matched to rows."""
    return f"kb/{knowledge_base_id}/{document_id}"


class ObjectStore:
    """Async facade over the blocking minio client (calls run in threads, with timeouts)."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool,
        region: str = "us-east-1",
        timeout_s: float = 30.0,
    ) -> None:
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(5.0, timeout_s), read=timeout_s),
            maxsize=16,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        self.bucket = bucket
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        return cls(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            timeout_s=settings.s3_timeout_s,
        )

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await wait_for(asyncio.to_thread(fn, *args, **kwargs), self._timeout_s * 2)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                raise ObjectMissing(exc.message or "object not found") from exc
            raise StorageUnavailable(f"{exc.code}: {exc.message}") from exc
        except (OSError, urllib3.exceptions.HTTPError, TimeoutError) as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc

    async def ensure_bucket(self) -> None:
        exists: bool = await self._run(self._client.bucket_exists, self.bucket)
        if not exists:
            try:
                await self._run(self._client.make_bucket, self.bucket)
            except StorageUnavailable as exc:
                if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                    raise

    async def put_file(self, key: str, path: Path, *, content_type: str) -> None:
        await self._run(self._client.fput_object, self.bucket, key, str(path), content_type=content_type)

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        await self._run(
            self._client.put_object, self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )

    async def get_to_file(self, key: str, path: Path) -> None:
        await self._run(self._client.fget_object, self.bucket, key, str(path))

    async def get_bytes(self, key: str) -> bytes:
        def _read() -> bytes:
            response = self._client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._run(_read)

    async def stream(self, key: str, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """Yield the object's bytes without loading it whole."""
        response = await self._run(self._client.get_object, self.bucket, key)
        iterator: Iterator[bytes] = response.stream(chunk_size)
        try:
            while True:
                chunk = await asyncio.to_thread(next, iterator, b"")
                if not chunk:
                    break
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def stat(self, key: str) -> StoredObject:
        info = await self._run(self._client.stat_object, self.bucket, key)
        return StoredObject(key=key, size=info.size or 0, last_modified=info.last_modified)

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except ObjectMissing:
            return False
        return True

    async def delete(self, key: str) -> None:
        """Delete an object; deleting a missing object is not an error (idempotent)."""
        try:
            await self._run(self._client.remove_object, self.bucket, key)
        except ObjectMissing:
            return

    async def list_page(self, prefix: str, *, start_after: str | None, limit: int) -> list[StoredObject]:
        """At most ``limit`` objects after ``start_after``, in key order: ListObjectsV2 pages, fetched as needed."""

        def _list() -> list[StoredObject]:
            listing = self._client.list_objects(self.bucket, prefix=prefix, recursive=True, start_after=start_after)
            return [
                StoredObject(key=o.object_name or "", size=o.size or 0, last_modified=o.last_modified)
                for o in itertools.islice(listing, limit)
            ]

        return await self._run(_list)

    async def list(self, prefix: str = "") -> list[StoredObject]:
        def _list() -> list[StoredObject]:
            return [
                StoredObject(key=o.object_name or "", size=o.size or 0, last_modified=o.last_modified)
                for o in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            ]

        return await self._run(_list)

    async def probe(self) -> None:
        """Write, read and delete a small object: proves the bucket works end to end."""
        key = "_kbingest/probe"
        await self.put_bytes(key, b"ok", content_type="text/plain")
        if await self.get_bytes(key) != b"ok":
            raise StorageUnavailable("probe object read back differently")
        await self.delete(key)
