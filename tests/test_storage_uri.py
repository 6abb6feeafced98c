"""Storage URIs without a server: what raycl prints and stores of them (never the query's
endpoint nor credentials), which errors it retries, and the order of a write (the live S3
tests are in tests/test_s3.py)."""

from __future__ import annotations

import sys

import pyarrow.fs as pafs
import pytest

from raycl.study import results
from raycl.study.results import (
    ResultStore,
    StorageError,
    StudyLock,
    resolve_storage,
    retry_storage,
    scrub,
    storage_error_text,
    storage_label,
    transient_storage_error,
)

QUERY = "?endpoint_override=10.1.2.3:9876&scheme=http"


def test_a_uri_is_printed_and_stored_without_its_query():
    assert storage_label(f"s3://bucket/a/b{QUERY}") == "s3://bucket/a/b"
    assert storage_label("/tmp/results") == "/tmp/results"
    fs, path, uri = resolve_storage(f"s3://bucket/a/b/{QUERY}")
    assert isinstance(fs, pafs.S3FileSystem) and (path, uri) == ("bucket/a/b", "s3://bucket/a/b")
    store = ResultStore(f"s3://bucket/a{QUERY}", "st")
    assert store.remote and store.uri == "s3://bucket/a/st"
    assert (store.ray_fs_path, store.ray_storage) == ("bucket/a/st/_ray", "s3://bucket/a/st/_ray")


def test_credentials_in_an_s3_uri_are_refused_without_being_repeated():
    with pytest.raises(StorageError) as err:
        resolve_storage(f"s3://AKID:s3cr3t-value@bucket/x{QUERY}")
    text = str(err.value)
    assert text.startswith("s3://bucket/x: credentials in the URI are refused")
    assert "s3cr3t-value" not in text and "AKID" not in text and "9876" not in text


def test_scrub_hides_the_endpoint_and_the_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:45678")
    resolve_storage(f"s3://bucket/x{QUERY}")  # its endpoint is remembered
    text = scrub("a very-secret-key; Failed to connect to 10.1.2.3 port 9876 after 0 ms; "
                 "http://127.0.0.1:45678/x; 127.0.0.1 port 45678; see s3://b/p?scheme=http end")
    assert text == "a ***; Failed to connect to *** after 0 ms; ***/x; ***; see s3://b/p end"


def test_storage_errors_say_what_to_do():
    missing = OSError("Bucket 'nope' not found. To create buckets, enable the "
                      "allow_bucket_creation option.")
    assert storage_error_text(missing).startswith("bucket 'nope' does not exist")
    denied = OSError("When getting information for key 'x' in bucket 'b': AWS Error "
                     "ACCESS_DENIED during HeadObject operation: No response body.")
    assert "refused the credentials" in storage_error_text(denied)


def test_only_an_unreachable_remote_storage_is_retried(monkeypatch):
    s3 = pafs.S3FileSystem(region="us-east-1", endpoint_override="127.0.0.1:1", scheme="http")
    down = OSError("AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 7, "
                   "Could not connect to server")
    assert transient_storage_error(down, s3)
    assert not transient_storage_error(down, pafs.LocalFileSystem())
    assert not transient_storage_error(OSError("AWS Error ACCESS_DENIED"), s3)
    assert not transient_storage_error(FileNotFoundError("gone"), s3)

    monkeypatch.setattr(results.time, "sleep", lambda s: None)
    calls, said = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise down
        return "done"

    assert retry_storage(flaky, s3, on_retry=said.append) == "done"
    assert len(calls) == 4 and said == [down]  # said once
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        retry_storage(lambda: (_ for _ in ()).throw(OSError("AWS Error ACCESS_DENIED")), s3)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):  # the time is up
        retry_storage(lambda: (_ for _ in ()).throw(down), s3, timeout_s=0)


def test_the_trials_table_is_written_last(tmp_path, monkeypatch):
    """A resumed run skips the trials the trials table says finished: their curves must be
    written before it, or a driver killed between two files loses them."""
    store = ResultStore(tmp_path, "st")
    names = []
    atomic = store._atomic
    monkeypatch.setattr(store, "_atomic", lambda name, write: (names.append(name),
                                                               atomic(name, write)))
    store.write()
    tables = [n for n in names if n.endswith(".parquet")]
    assert tables[-1] == "trials.parquet" and {"curves.parquet", "matrix.parquet"} <= set(tables)


def test_the_lock_records_the_command_without_the_uri_query(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["raycl.study", "s.py", "--storage", f"s3://b/p{QUERY}",
                                      f"--storage=s3://b/q{QUERY}"])
    lock = StudyLock(pafs.LocalFileSystem(), str(tmp_path), str(tmp_path), "st")
    assert lock.info["command"] == "raycl.study s.py --storage s3://b/p --storage=s3://b/q"
