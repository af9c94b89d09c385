"""S3 / MinIO object store through the ``minio`` SDK."""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Iterator
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.error import S3Error

from looptool.shared.storage.base import NotFound, ObjectStore, StorageError

_PART_SIZE = 16 * 1024 * 1024


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
    ):
        parsed = urlparse(endpoint if "://" in endpoint else f"{'https' if secure else 'http'}://{endpoint}")
        self.endpoint = parsed.netloc
        self.secure = parsed.scheme == "https"
        self.bucket = bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 10.0), read=timeout_s),
            retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            maxsize=16,
        )
        self.client = Minio(
            self.endpoint, access_key=access_key, secret_key=secret_key, secure=self.secure, region=region, http_client=http
        )
        self._create_bucket = create_bucket
        self._bucket_checked = False

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                if not self._create_bucket:
                    raise StorageError(f"bucket s3://{self.bucket} does not exist at {self.endpoint}; create it first")
                self.client.make_bucket(self.bucket)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(
                f"S3 endpoint {self.endpoint} is unreachable ({exc.__class__.__name__}); "
                "check storage.s3.endpoint and that the server is running"
            ) from exc
        except S3Error as exc:
            raise StorageError(f"s3://{self.bucket} at {self.endpoint}: {exc.code}: {exc.message}") from exc
        self._bucket_checked = True

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def _wrap(self, key: str, exc: Exception) -> StorageError:
        if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            return NotFound(f"{self.uri(key)} does not exist; check the URI or run the stage that produces it")
        if isinstance(exc, S3Error):
            return StorageError(f"{self.uri(key)}: {exc.code}: {exc.message}")
        return StorageError(f"{self.uri(key)}: S3 endpoint {self.endpoint} failed ({exc}); check storage.s3 settings")

    # S3 PUT of a single object is atomic: readers see the old object or the new one, never a part.
    def put_bytes(self, key: str, data: bytes) -> None:
        self._ensure_bucket()
        try:
            self.client.put_object(self.bucket, key.lstrip("/"), io.BytesIO(data), len(data), part_size=_PART_SIZE)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._wrap(key, exc) from exc

    def put_file(self, key: str, path: str) -> None:
        self._ensure_bucket()
        try:
            self.client.fput_object(self.bucket, key.lstrip("/"), path, part_size=_PART_SIZE)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._wrap(key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def open_read(self, key: str) -> BinaryIO:
        self._ensure_bucket()
        try:
            resp = self.client.get_object(self.bucket, key.lstrip("/"))
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._wrap(key, exc) from exc
        return _ResponseReader(resp)

    def get_file(self, key: str, path: str) -> None:
        self._ensure_bucket()
        try:
            self.client.fget_object(self.bucket, key.lstrip("/"), path)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._wrap(key, exc) from exc

    def exists(self, key: str) -> bool:
        self._ensure_bucket()
        try:
            self.client.stat_object(self.bucket, key.lstrip("/"))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                return False
            raise self._wrap(key, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._wrap(key, exc) from exc

    def list(self, prefix: str) -> Iterator[str]:
        self._ensure_bucket()
        try:
            keys = [o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix.lstrip("/"), recursive=True)]
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._wrap(prefix, exc) from exc
        return iter(sorted(k for k in keys if k is not None))

    def delete(self, key: str) -> None:
        self._ensure_bucket()
        try:
            self.client.remove_object(self.bucket, key.lstrip("/"))
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._wrap(key, exc) from exc


class _ResponseReader(io.RawIOBase):
    """File-like wrapper over a urllib3 response that releases the connection on close."""

    def __init__(self, resp):
        self._resp = resp

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._resp.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._resp.close()
                self._resp.release_conn()
            finally:
                super().close()


def s3_settings_from_env() -> dict[str, str]:
    return {
        "endpoint": os.environ.get("LOOPTOOL_S3_ENDPOINT", ""),
        "access_key": os.environ.get("LOOPTOOL_S3_ACCESS_KEY", os.environ.get("AWS_ACCESS_KEY_ID", "")),
        "secret_key": os.environ.get("LOOPTOOL_S3_SECRET_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY", "")),
    }
