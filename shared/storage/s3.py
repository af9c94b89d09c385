"""S3 / MinIO object store through the ``minio`` SDK.

Errors are translated at this boundary: a missing key or bucket is ``NotFound``; an unreachable
endpoint, bad credentials or an invalid bucket name is ``StorageError``; every message names the
``s3://`` URI (and the endpoint) and what to check. Timeouts are short by default so that a wrong
endpoint fails in seconds, not minutes. Reads never create buckets; the first write does (unless
``create_bucket=False``).
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Callable, Iterator, TypeVar
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

from looptool.shared.storage.base import NotFound, ObjectStore, PreconditionFailed, StorageError

_PART_SIZE = 16 * 1024 * 1024
_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound", "NoSuchBucket")
_AUTH = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")
_NET_ERRORS = (urllib3.exceptions.HTTPError, OSError)
T = TypeVar("T")


class S3Store(ObjectStore):
    scheme = "s3"

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        create_bucket: bool = True,
        timeout_s: float = 30.0,
        retries: int = 3,
        connect_timeout_s: float = 3.0,
    ):
        parsed = urlparse(endpoint if "://" in endpoint else f"{'https' if secure else 'http'}://{endpoint}")
        if not parsed.netloc:
            raise StorageError(f"S3 endpoint {endpoint!r} is not host:port or a URL; check storage.s3.endpoint")
        self.endpoint = parsed.netloc
        self.secure = parsed.scheme == "https"
        self.bucket = bucket
        try:
            check_bucket_name(bucket)  # lenient: legacy buckets may be read; creation checks strictly
        except ValueError:
            raise StorageError(
                f"s3://{bucket}: invalid bucket name; use 3-63 lowercase letters, digits, '-' and '.'"
            ) from None
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, connect_timeout_s), read=timeout_s),
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504], raise_on_status=False
            ),
            maxsize=16,
        )
        try:
            self.client = Minio(
                self.endpoint, access_key=access_key, secret_key=secret_key, secure=self.secure, region=region, http_client=http
            )
        except ValueError as exc:
            raise StorageError(f"S3 endpoint {endpoint!r}: {exc}; check storage.s3.endpoint") from None
        self._create_bucket = create_bucket
        self._bucket_checked = False

    def __repr__(self) -> str:
        return f"S3Store(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def _wrap(self, key: str, exc: Exception) -> StorageError:
        uri = self.uri(key)
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchBucket":
                return NotFound(f"{uri} does not exist (no bucket {self.bucket!r} at {self.endpoint}); check the URI")
            if exc.code in _MISSING:
                return NotFound(f"{uri} does not exist; check the URI or run the stage that produces it")
            if exc.code in _AUTH:
                return StorageError(
                    f"{uri}: {exc.code} at {self.endpoint}; check storage.s3.access_key / secret_key and bucket permissions"
                )
            return StorageError(f"{uri}: {exc.code}: {exc.message}")
        if isinstance(exc, MinioException):
            return StorageError(f"{uri}: S3 endpoint {self.endpoint} answered badly ({exc}); check storage.s3.endpoint")
        if isinstance(exc, ValueError):
            return StorageError(f"{uri}: {exc}")
        return StorageError(
            f"{uri}: S3 endpoint {self.endpoint} is unreachable ({exc.__class__.__name__}); "
            "check storage.s3.endpoint and that the server is running"
        )

    def _call(self, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (MinioException, ValueError, *_NET_ERRORS) as exc:
            raise self._wrap(key, exc) from exc

    def _ensure_bucket(self) -> None:
        """Before the first write: create the bucket if it is missing (and allowed)."""
        if self._bucket_checked:
            return
        if not self._call("", lambda: self.client.bucket_exists(self.bucket)):
            if not self._create_bucket:
                raise StorageError(f"bucket s3://{self.bucket} does not exist at {self.endpoint}; create it first")
            try:
                check_bucket_name(self.bucket, strict=True)  # new buckets: today's rules (lowercase)
            except ValueError:
                raise StorageError(
                    f"s3://{self.bucket}: invalid name for a new bucket; use 3-63 lowercase letters, digits, '-' and '.'"
                ) from None
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):  # lost a creation race
                    raise self._wrap("", exc) from exc
            except (MinioException, ValueError, *_NET_ERRORS) as exc:
                raise self._wrap("", exc) from exc
        self._bucket_checked = True

    # S3 PUT of a single object is atomic: readers see the old object or the new one, never a part.
    def put_bytes(self, key: str, data: bytes) -> None:
        self._ensure_bucket()
        self._call(
            key, lambda: self.client.put_object(self.bucket, key.lstrip("/"), io.BytesIO(data), len(data), part_size=_PART_SIZE)
        )

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        resp = self._call(key, lambda: self.client.get_object(self.bucket, key.lstrip("/")))
        try:
            data = resp.read()
            return data, (resp.headers.get("etag") or "").strip('"')
        except _NET_ERRORS as exc:
            raise self._wrap(key, exc) from exc
        finally:
            resp.close()
            resp.release_conn()

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        """A conditional PUT (``If-None-Match: *`` / ``If-Match: <etag>``; AWS S3, MinIO and
        SeaweedFS honour them). The SDK's public put_object turns extra headers into user metadata,
        hence its lower-level ``_put_object``. A store that ignored the header would make this a plain
        put: the lease then degrades to best effort (heartbeat and expiry still apply)."""
        self._ensure_bucket()
        headers: dict[str, str | list[str] | tuple[str]] = {"If-None-Match": "*"} if tag is None else {"If-Match": f'"{tag}"'}
        try:
            result = self.client._put_object(self.bucket, key.lstrip("/"), data, headers=headers)
        except S3Error as exc:
            if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise PreconditionFailed(
                    f"{self.uri(key)} " + ("already exists" if tag is None else "changed") + " since it was read; re-read it"
                ) from None
            raise self._wrap(key, exc) from exc
        except (MinioException, ValueError, *_NET_ERRORS) as exc:
            raise self._wrap(key, exc) from exc
        return result.etag or ""

    def put_file(self, key: str, path: str) -> None:
        if not os.path.isfile(path):
            raise NotFound(f"{path} does not exist; nothing to upload")
        self._ensure_bucket()
        self._call(key, lambda: self.client.fput_object(self.bucket, key.lstrip("/"), path, part_size=_PART_SIZE))

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def open_read(self, key: str) -> BinaryIO:
        resp = self._call(key, lambda: self.client.get_object(self.bucket, key.lstrip("/")))
        return io.BufferedReader(_ResponseReader(resp, self, key), 1 << 20)

    def get_file(self, key: str, path: str) -> None:
        self._call(key, lambda: self.client.fget_object(self.bucket, key.lstrip("/"), path))

    def exists(self, key: str) -> bool:
        try:
            self.client.stat_object(self.bucket, key.lstrip("/"))
            return True
        except S3Error as exc:
            if exc.code in _MISSING:
                return False
            raise self._wrap(key, exc) from exc
        except (MinioException, ValueError, *_NET_ERRORS) as exc:
            raise self._wrap(key, exc) from exc

    def list(self, prefix: str) -> Iterator[str]:
        def names() -> list[str]:
            objs = self.client.list_objects(self.bucket, prefix=prefix.lstrip("/"), recursive=True)
            return [o.object_name for o in objs if o.object_name is not None]

        try:
            keys = names()
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return iter(())
            raise self._wrap(prefix, exc) from exc
        except (MinioException, ValueError, *_NET_ERRORS) as exc:
            raise self._wrap(prefix, exc) from exc
        return iter(sorted(keys))

    def delete(self, key: str) -> None:
        try:
            self.client.remove_object(self.bucket, key.lstrip("/"))
        except S3Error as exc:
            if exc.code in _MISSING:
                return
            raise self._wrap(key, exc) from exc
        except (MinioException, ValueError, *_NET_ERRORS) as exc:
            raise self._wrap(key, exc) from exc


class _ResponseReader(io.RawIOBase):
    """File-like wrapper over a urllib3 response that releases the connection on close."""

    def __init__(self, resp, store: S3Store, key: str):
        self._resp, self._store, self._key = resp, store, key

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self._resp.read(len(b))
        except _NET_ERRORS as exc:
            raise self._store._wrap(self._key, exc) from exc
        n = len(data)
        b[:n] = data
        return n

    def readall(self) -> bytes:
        """The rest of the body in one read (urllib3 reads Content-Length bytes into one buffer);
        ``RawIOBase.readall`` would go 8 KiB at a time, copying each chunk twice."""
        try:
            return self._resp.read()
        except _NET_ERRORS as exc:
            raise self._store._wrap(self._key, exc) from exc

    def close(self) -> None:
        if not self.closed:
            try:
                self._resp.close()
                self._resp.release_conn()
            finally:
                super().close()
