"""Object storage: the only module of the project that knows about storage URIs.

Accepted locations:

* a local path (``/data/ytvos``, ``runs/x``) or a ``file://`` URI (``file:///data/ytvos``);
* an ``s3://bucket/key`` URI, on AWS or any S3-compatible endpoint (MinIO, moto, Ceph). The endpoint comes from
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, the region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (default
  ``us-east-1``) and the credentials from the usual AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``) or, when those are unset, from the AWS SDK's default chain (profile, instance role).

Everything goes through :mod:`pyarrow.fs` (the same filesystem objects Ray Data reads Parquet with), so no boto3 is
needed. Transient errors (throttling, 5xx, dropped connections) are retried with exponential backoff, both by the AWS
SDK inside pyarrow and by :func:`pipelines.storage_errors.retry` around every call; missing buckets, missing keys and
permission problems are raised as :class:`StorageError` subclasses whose message names the URI and the fix
(:mod:`pipelines.storage_errors`).

Writes are atomic: a local file is written to a temporary name in the same folder and renamed; an S3 object is
written with one upload, which S3 makes visible only once it is complete.
"""

from __future__ import annotations

import functools
import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pipelines.storage_errors import BucketNotFoundError as BucketNotFoundError  # the errors storage raises
from pipelines.storage_errors import StorageError as StorageError
from pipelines.storage_errors import StorageNotFoundError as StorageNotFoundError
from pipelines.storage_errors import StoragePermissionError as StoragePermissionError
from pipelines.storage_errors import classify, retry

T = TypeVar("T")


@dataclass(frozen=True)
class Location:
    """A resolved storage location.

    Attributes:
        uri: the normalised URI (``s3://bucket/key`` or an absolute local path).
        fs: the pyarrow filesystem that holds it.
        path: the path inside ``fs`` (``bucket/key`` for S3, an absolute path locally).
        scheme: ``"s3"`` or ``"file"``.
    """

    uri: str
    fs: pafs.FileSystem
    path: str
    scheme: str

    @property
    def is_s3(self) -> bool:
        """True for an S3 location."""
        return self.scheme == "s3"


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(
    endpoint: str | None, region: str, access_key: str | None, secret_key: str | None, token: str | None
) -> pafs.S3FileSystem:
    kwargs: dict = {
        "region": region,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(
            max_attempts=int(os.environ.get("SGMG_S3_MAX_ATTEMPTS", "5"))
        ),
        "connect_timeout": 10,
        "request_timeout": 60,
        "allow_bucket_creation": False,
        "allow_bucket_deletion": False,
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme or "https"
    if access_key and secret_key:
        kwargs.update(access_key=access_key, secret_key=secret_key, session_token=token)
    return pafs.S3FileSystem(**kwargs)


def s3_endpoint() -> str | None:
    """The S3 endpoint from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (None: the AWS default)."""
    return _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 filesystem configured from the environment (see the module docstring); cached per configuration."""
    return _s3_filesystem(
        s3_endpoint(),
        _env("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
        _env("AWS_ACCESS_KEY_ID"),
        _env("AWS_SECRET_ACCESS_KEY"),
        _env("AWS_SESSION_TOKEN"),
    )


def is_s3(uri: str) -> bool:
    """True if ``uri`` is an ``s3://`` URI."""
    return str(uri).startswith("s3://")


def as_uri(base: str | os.PathLike, path: str) -> str:
    """``path``, a path inside the filesystem of ``base``'s location as pyarrow and Ray report it (``bucket/key`` on
    S3), as a URI of that location (``s3://bucket/key``; a local path stays as it is)."""
    if resolve(base).is_s3 and not is_s3(path):
        return "s3://" + path
    return path


def resolve(uri: str | os.PathLike) -> Location:
    """Resolve a path or URI to its filesystem.

    Args:
        uri: a local path, a ``file://`` URI or an ``s3://bucket/key`` URI.

    Returns:
        The :class:`Location`.

    Raises:
        StorageError: for another scheme or an S3 URI without a bucket.
    """
    text = os.fspath(uri)
    if text.startswith("s3://"):
        path = text[len("s3://") :].strip("/")
        if not path or path.startswith("/"):
            raise StorageError(f"{text!r} names no bucket; expected s3://BUCKET/KEY")
        return Location(uri=f"s3://{path}", fs=s3_filesystem(), path=path, scheme="s3")
    if text.startswith("file://"):
        text = urlparse(text).path
    elif "://" in text:
        raise StorageError(f"unsupported storage URI {text!r}; use a local path, file:///abs/path or s3://bucket/key")
    path = os.path.abspath(os.path.expanduser(text))
    return Location(uri=path, fs=pafs.LocalFileSystem(), path=path, scheme="file")


def join(uri: str, *parts: str) -> str:
    """Join ``parts`` (``/``-separated, relative) onto ``uri``, keeping its scheme."""
    text = os.fspath(uri)
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if is_s3(text) or text.startswith("file://"):
        return posixpath.join(text.rstrip("/"), *clean)
    return os.path.join(text, *clean)


def _check_bucket(loc: Location) -> None:
    """Raise :class:`BucketNotFoundError` when an S3 location's bucket is missing (pyarrow reports a bare 404)."""
    if not loc.is_s3:
        return
    bucket = loc.path.split("/", 1)[0]
    info = retry(lambda: loc.fs.get_file_info(bucket), loc.uri, "stat")
    if info.type == pafs.FileType.NotFound:
        raise classify(OSError(f"NO_SUCH_BUCKET {bucket}"), loc.uri, "access")


def read_bytes(uri: str | os.PathLike) -> bytes:
    """Read a whole object or file.

    Raises:
        StorageNotFoundError: the object (or its bucket: :class:`BucketNotFoundError`) does not exist.
        StoragePermissionError: the credentials may not read it.
    """
    loc = resolve(uri)

    def read() -> bytes:
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read()

    try:
        return retry(read, loc.uri, "read")
    except StorageNotFoundError:
        _check_bucket(loc)
        raise


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically: readers see either no object or the complete one.

    Locally the bytes go to a temporary file in the same folder that is then renamed over ``uri``; on S3 a single
    upload is made visible by the service only when complete. Parent folders are created as needed.
    """
    loc = resolve(uri)
    if loc.is_s3:

        def put() -> None:
            with loc.fs.open_output_stream(loc.path) as f:
                f.write(data)

        retry(put, loc.uri, "write")
        return
    parent = os.path.dirname(loc.path)
    tmp = os.path.join(parent, f".{os.path.basename(loc.path)}.tmp-{uuid.uuid4().hex[:12]}")

    def put_local() -> None:
        os.makedirs(parent, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, loc.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    retry(put_local, loc.uri, "write")


def exists(uri: str | os.PathLike) -> bool:
    """True if a file/object or a folder/prefix exists at ``uri``.

    Raises:
        BucketNotFoundError: for an S3 URI whose bucket does not exist.
    """
    loc = resolve(uri)
    info = retry(lambda: loc.fs.get_file_info(loc.path), loc.uri, "stat")
    if info.type != pafs.FileType.NotFound:
        return True
    if loc.is_s3:
        _check_bucket(loc)
    return False


def is_file(uri: str | os.PathLike) -> bool:
    """True if a file/object (not a folder) exists at ``uri``."""
    loc = resolve(uri)
    return retry(lambda: loc.fs.get_file_info(loc.path), loc.uri, "stat").type == pafs.FileType.File


def list_dir(uri: str | os.PathLike, recursive: bool = False) -> list[str]:
    """Names under a folder/prefix, relative to it, sorted; folders included (non-recursive listing only).

    Hidden temporaries of :func:`write_bytes` (``.NAME.tmp-*``) are skipped.

    Raises:
        StorageNotFoundError: the folder does not exist (for S3: :class:`BucketNotFoundError` if the bucket is
            missing; an empty prefix lists as empty).
    """
    loc = resolve(uri)
    base = loc.path.rstrip("/")
    if loc.is_s3:
        _check_bucket(loc)
    selector = pafs.FileSelector(base + ("/" if loc.is_s3 else ""), recursive=recursive, allow_not_found=loc.is_s3)
    infos = retry(lambda: loc.fs.get_file_info(selector), loc.uri, "list")
    names = []
    for info in infos:
        rel = info.path[len(base) :].lstrip("/")
        if not rel or (recursive and info.type == pafs.FileType.Directory):
            continue
        if ".tmp-" in posixpath.basename(rel) and posixpath.basename(rel).startswith("."):
            continue
        names.append(rel)
    return sorted(names)


def delete(uri: str | os.PathLike, missing_ok: bool = True) -> None:
    """Delete one file/object."""
    loc = resolve(uri)
    try:
        retry(lambda: loc.fs.delete_file(loc.path), loc.uri, "delete")
    except StorageNotFoundError:
        if not missing_ok:
            raise


def delete_tree(uri: str | os.PathLike) -> None:
    """Delete a folder/prefix and everything under it (nothing when it does not exist)."""
    loc = resolve(uri)
    try:
        retry(lambda: loc.fs.delete_dir(loc.path.rstrip("/")), loc.uri, "delete")
    except StorageNotFoundError:
        pass


def remove_stale_temporaries(uri: str | os.PathLike) -> list[str]:
    """Delete the temporaries (``.NAME.tmp-*``) that an interrupted :func:`write_bytes` left in a local folder.

    Only call it when no other writer is active in the folder. S3 needs nothing: an interrupted upload never
    becomes an object.

    Returns:
        The names removed.
    """
    loc = resolve(uri)
    if loc.is_s3 or not os.path.isdir(loc.path):
        return []
    removed = []
    for name in os.listdir(loc.path):
        if name.startswith(".") and ".tmp-" in name:
            os.remove(os.path.join(loc.path, name))
            removed.append(name)
    return sorted(removed)


def read_with(uri: str | os.PathLike, read: Callable[[pafs.FileSystem, str], T]) -> T:
    """``read(filesystem, path)`` for ``uri``, with the retries and error messages of :func:`read_bytes`.

    For partial reads of large objects (Parquet row groups through ``pq.ParquetFile(fs.open_input_file(path))``):
    the whole call is retried on a transient error, so ``read`` must have no side effects.

    Raises:
        StorageNotFoundError: the object (or its bucket: :class:`BucketNotFoundError`) does not exist.
        StoragePermissionError: the credentials may not read it.
    """
    loc = resolve(uri)
    try:
        return retry(lambda: read(loc.fs, loc.path), loc.uri, "read")
    except StorageNotFoundError:
        _check_bucket(loc)
        raise


def pyarrow_location(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for APIs that take a pyarrow filesystem (``ray.data.read_parquet(path, filesystem=)``)."""
    loc = resolve(uri)
    return loc.fs, loc.path


class StorageFileSource:
    """A :class:`sgmg.data.io.FileSource` over any storage location, so dataset readers read straight from S3.

    Paths given to the methods are ``/``-separated and relative to ``root``. It follows the protocol's contract:
    :meth:`read_bytes` raises ``sgmg.data.io.DataError`` naming the file (the storage error's message, with its fix,
    is kept), and :meth:`list_dir` returns ``[]`` for a missing folder. A missing bucket or a permission problem is
    not a data problem and is raised as the :class:`StorageError`. Picklable (it keeps only the root URI), so it can
    be shipped to Ray tasks.

    Args:
        root: the dataset root (local path, ``file://`` or ``s3://`` URI).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = resolve(root).uri

    def _uri(self, rel: str) -> str:
        return join(self.root, rel) if rel else self.root

    def read_bytes(self, rel: str) -> bytes:
        """Bytes of the file ``rel``; ``DataError`` naming it when it is missing."""
        from sgmg.data.io import DataError

        try:
            return read_bytes(self._uri(rel))
        except BucketNotFoundError:
            raise
        except (StorageNotFoundError, IsADirectoryError) as err:
            raise DataError(f"cannot read {self.describe(rel)}: {err}") from err

    def list_dir(self, rel: str = "") -> list[str]:
        """Sorted names of the entries directly inside folder ``rel``; ``[]`` when it does not exist."""
        try:
            return list_dir(self._uri(rel))
        except BucketNotFoundError:
            raise
        except (StorageNotFoundError, NotADirectoryError):
            return []

    def exists(self, rel: str) -> bool:
        """True if ``rel`` exists (file or folder)."""
        return exists(self._uri(rel))

    def is_dir(self, rel: str) -> bool:
        """True if ``rel`` is a folder (an S3 prefix with objects under it)."""
        loc = resolve(self._uri(rel))
        return retry(lambda: loc.fs.get_file_info(loc.path), loc.uri, "stat").type == pafs.FileType.Directory

    def describe(self, rel: str = "") -> str:
        """The full location of ``rel``, for error messages."""
        return self._uri(rel)

    def __repr__(self) -> str:
        return f"StorageFileSource({self.root!r})"

    def __reduce__(self) -> tuple:
        return (StorageFileSource, (self.root,))
