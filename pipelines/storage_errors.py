"""Storage errors: the :class:`StorageError` family that :mod:`pipelines.storage` raises (each message names the URI and
the fix), how a pyarrow/OS error is classified into it, and the retry of transient errors (throttling, 5xx, dropped
connections) with exponential backoff and jitter (``SGMG_STORAGE_RETRIES`` attempts, default 5)."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("pipelines.storage")  # the retries are storage's warnings

T = TypeVar("T")

#: Substrings of error messages that mark an error as transient (worth retrying).
_TRANSIENT_MARKERS = (
    "SLOW_DOWN",
    "SlowDown",
    "THROTTLING",
    "Throttling",
    "RequestTimeout",
    "REQUEST_TIMEOUT",
    "SERVICE_UNAVAILABLE",
    "ServiceUnavailable",
    "INTERNAL_FAILURE",
    "InternalError",
    "NETWORK_CONNECTION",
    "Connection reset",
    "Connection refused",
    "Broken pipe",
    "curlCode",
    "Timeout",
    "timed out",
    "HTTP response code: 500",
    "HTTP response code: 502",
    "HTTP response code: 503",
    "HTTP response code: 504",
)
_PERMISSION_MARKERS = (
    "ACCESS_DENIED",
    "AccessDenied",
    "Forbidden",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
)
_NO_BUCKET_MARKERS = ("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist")


class StorageError(OSError):
    """A storage operation failed; the message names the URI and what to do."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object, file or folder does not exist."""


class BucketNotFoundError(StorageNotFoundError):
    """The S3 bucket does not exist (or the endpoint is not the one that holds it)."""


class StoragePermissionError(StorageError, PermissionError):
    """The credentials may not perform the operation."""


def classify(exc: BaseException, uri: str, action: str) -> BaseException:
    """Turn a pyarrow/OS error into a :class:`StorageError` with a useful message (or return it unchanged)."""
    if isinstance(exc, StorageError):
        return exc
    from pipelines import storage  # at call time: storage imports this module

    msg = str(exc)
    s3 = storage.is_s3(uri)
    bucket = uri[len("s3://") :].split("/", 1)[0] if s3 else ""
    endpoint = storage.s3_endpoint() or "the AWS default endpoint"
    if any(m in msg for m in _NO_BUCKET_MARKERS):
        return BucketNotFoundError(
            f"cannot {action} {uri}: bucket {bucket!r} does not exist at {endpoint}; create it "
            f"(`aws s3 mb s3://{bucket}`) or point AWS_ENDPOINT_URL at the endpoint that holds it"
        )
    if isinstance(exc, PermissionError) or any(m in msg for m in _PERMISSION_MARKERS):
        fix = (
            "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the instance role) and the bucket policy"
            if s3
            else "check the file permissions"
        )
        return StoragePermissionError(f"permission denied to {action} {uri}: {fix} ({msg})")
    if isinstance(exc, FileNotFoundError):
        return StorageNotFoundError(f"cannot {action} {uri}: it does not exist; check the path/URI")
    return exc


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, StorageError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and any(m in str(exc) for m in _TRANSIENT_MARKERS)


def retry(fn: Callable[[], T], uri: str, action: str, attempts: int | None = None, base_delay: float = 0.2) -> T:
    """Call ``fn``, retrying transient errors with exponential backoff and jitter; classify the final error."""
    attempts = attempts or int(os.environ.get("SGMG_STORAGE_RETRIES", "5"))
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt + 1 < attempts and is_transient(exc):
                delay = base_delay * (2**attempt) * (1 + random.random())
                log.warning(
                    "transient error to %s %s (%s); retry %d/%d in %.1fs",
                    action,
                    uri,
                    exc,
                    attempt + 1,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)
                continue
            raise classify(exc, uri, action) from exc
    raise AssertionError("unreachable")
