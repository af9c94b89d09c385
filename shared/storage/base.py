"""The object-store interface every storage backend implements."""

from __future__ import annotations

import abc
from typing import BinaryIO, Iterator


class StorageError(RuntimeError):
    """Storage failed; the message names the URI and what to do."""


class NotFound(StorageError):
    pass


class PreconditionFailed(StorageError):
    """A conditional write lost: the object changed (or appeared) since the writer read it."""


class ObjectStore(abc.ABC):
    """A flat key → bytes store. Keys use '/' separators. Every put is atomic."""

    scheme: str

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """Full URI of a key (file:///... or s3://bucket/...)."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def put_file(self, key: str, path: str) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A streaming reader; the caller closes it."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str) -> None: ...

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Keys under prefix, recursively, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    # Compare-and-swap, for the few objects several writers may race on (a round's lease and
    # status): the tag is an opaque version of the object's content (an S3 ETag, a content hash).
    def get_tagged(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its tag; NotFound when absent."""
        raise StorageError(f"{self.uri(key)}: this store does not support conditional writes")

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Write only if the object still has ``tag`` (``None``: only if it does not exist);
        returns the new tag, or raises PreconditionFailed."""
        raise StorageError(f"{self.uri(key)}: this store does not support conditional writes")

    def delete_prefix(self, prefix: str) -> int:
        n = 0
        for key in list(self.list(prefix)):
            self.delete(key)
            n += 1
        return n
