"""pipelines.storage: local and S3 (moto on loopback) paths, atomic writes, retries and error messages."""

from __future__ import annotations

import os

import pytest

from pipelines import storage, storage_errors


def test_local_roundtrip_and_listing(tmp_path) -> None:
    root = tmp_path / "root"
    storage.write_bytes(str(root / "a" / "x.bin"), b"hello")
    storage.write_bytes(f"file://{root}/b.txt", b"bye")
    assert storage.read_bytes(root / "a" / "x.bin") == b"hello"
    assert storage.list_dir(root) == ["a", "b.txt"]
    assert storage.list_dir(root, recursive=True) == ["a/x.bin", "b.txt"]
    assert storage.exists(root / "a") and not storage.exists(root / "zzz")
    assert storage.is_file(root / "b.txt") and not storage.is_file(root / "a")
    # no temporary left behind by the atomic write
    assert sorted(os.listdir(root / "a")) == ["x.bin"]
    storage.delete(root / "b.txt")
    assert storage.list_dir(root) == ["a"]
    (root / ".c.bin.tmp-1234").write_bytes(b"partial")  # what a killed write leaves behind
    assert storage.list_dir(root) == ["a"]
    assert storage.remove_stale_temporaries(root) == [".c.bin.tmp-1234"]
    assert sorted(os.listdir(root)) == ["a"]


def test_local_errors_name_the_path(tmp_path) -> None:
    with pytest.raises(storage.StorageNotFoundError, match="missing.bin"):
        storage.read_bytes(tmp_path / "missing.bin")
    with pytest.raises(FileNotFoundError):  # subclass of the builtin, so callers may catch either
        storage.list_dir(tmp_path / "nodir")
    with pytest.raises(storage.StorageError, match="gs://"):
        storage.resolve("gs://bucket/x")
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.resolve("s3://")


def test_retry_backs_off_on_transient_errors_only() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("AWS Error SLOW_DOWN during GetObject operation")
        return "ok"

    assert storage_errors.retry(flaky, "s3://b/k", "read", attempts=4, base_delay=0.001) == "ok"
    assert len(calls) == 3

    calls.clear()

    def denied() -> None:
        calls.append(1)
        raise OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied")

    with pytest.raises(storage.StoragePermissionError, match="s3://b/k.*AWS_ACCESS_KEY_ID"):
        storage_errors.retry(denied, "s3://b/k", "read", attempts=4, base_delay=0.001)
    assert len(calls) == 1  # permission errors are not retried


def test_file_source_adapter_is_picklable(tmp_path) -> None:
    import pickle

    storage.write_bytes(str(tmp_path / "JPEGImages" / "v1" / "00000.jpg"), b"\xff\xd8")
    src = pickle.loads(pickle.dumps(storage.StorageFileSource(tmp_path)))
    assert src.list_dir("JPEGImages") == ["v1"]
    assert src.read_bytes("JPEGImages/v1/00000.jpg") == b"\xff\xd8"
    assert src.exists("JPEGImages/v1") and not src.exists("Annotations")
    assert src.is_dir("JPEGImages/v1") and not src.is_dir("JPEGImages/v1/00000.jpg")
    assert src.list_dir("Annotations") == []  # FileSource contract: a missing folder lists as empty
    from sgmg.data.io import DataError, FileSource

    assert isinstance(src, FileSource)
    with pytest.raises(DataError, match="00001.jpg"):
        src.read_bytes("JPEGImages/v1/00001.jpg")
    assert src.describe("JPEGImages/v1").endswith(os.path.join("JPEGImages", "v1"))


@pytest.mark.integration
def test_s3_roundtrip_and_errors(s3_server, s3_bucket) -> None:
    base = f"s3://{s3_bucket}/data"
    storage.write_bytes(f"{base}/a/x.bin", b"hello")
    storage.write_bytes(f"{base}/b.txt", b"bye")
    assert storage.read_bytes(f"{base}/a/x.bin") == b"hello"
    assert storage.list_dir(base) == ["a", "b.txt"]
    assert storage.list_dir(base, recursive=True) == ["a/x.bin", "b.txt"]
    assert storage.exists(f"{base}/a") and not storage.exists(f"{base}/nothing")
    src = storage.StorageFileSource(base)
    assert src.read_bytes("b.txt") == b"bye" and src.list_dir("a") == ["x.bin"]
    assert src.is_dir("a") and not src.is_dir("b.txt") and src.list_dir("nothing") == []

    with pytest.raises(storage.StorageNotFoundError, match=f"s3://{s3_bucket}/data/missing"):
        storage.read_bytes(f"{base}/missing")
    with pytest.raises(storage.BucketNotFoundError, match="no-such-bucket-xyz.*aws s3 mb"):
        storage.read_bytes("s3://no-such-bucket-xyz/k")
    with pytest.raises(storage.BucketNotFoundError, match="no-such-bucket-xyz"):
        storage.write_bytes("s3://no-such-bucket-xyz/k", b"1")
    with pytest.raises(storage.BucketNotFoundError):
        storage.list_dir("s3://no-such-bucket-xyz/")
