"""File operations on score parts that may live on object storage (s3://, gs://, file://, any fsspec URL).

Plain paths keep the native calls (os.replace, pathlib); URLs go through fsspec. A part is written to a
temporary key and moved to its final key when complete. On object stores a move is a server-side copy then a
delete, and the copy makes the final object appear whole or not at all; writing the final key in one upload
would be atomic too, but an fsspec file cannot be abandoned portably (closing it publishes what was written),
so a part that fails half-way would appear under its final name. With a temporary key, a crash or a failed
agent leaves only a `.tmp-` object, which the next run deletes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def temp_path(final: str | os.PathLike) -> Path:
    """A hidden name beside `final` for this process to write to before publishing (`.NAME.tmp-PID`): it
    matches no glob of final names, and a crash leaves only a file a later run can recognise and delete."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def publish(tmp: str | os.PathLike, final: str | os.PathLike, *, fsync: bool = False) -> None:
    """Rename a finished file or directory over `final` (an existing directory there is replaced). With
    `fsync`, the file's bytes reach the disk first, so a machine crash cannot leave a complete-looking name
    over an empty file."""
    tmp, final = Path(tmp), Path(final)
    if fsync and tmp.is_file():
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if tmp.is_dir() and final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file or a directory tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Write a file or directory at the yielded temporary path; when the body returns it is published under
    `final` in one rename, and when the body raises it is removed, so `final` is either the old or the new
    whole thing, never half of one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    remove_path(tmp)
    try:
        yield tmp
        publish(tmp, final, fsync=fsync)
    finally:
        remove_path(tmp)


def is_url(path: str) -> bool:
    return "://" in path


def filesystem(url: str) -> tuple[Any, str]:
    """fsspec filesystem and protocol-less path of a URL."""
    import fsspec

    return fsspec.core.url_to_fs(url)


def make_parent_dirs(path: str) -> None:
    """Create the directory a file will be written in (a no-op on object stores)."""
    if not is_url(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return
    fs, fs_path = filesystem(path)
    fs.makedirs(fs_path.rsplit("/", 1)[0], exist_ok=True)


def parquet_writer(path: str, schema: pa.Schema) -> pq.ParquetWriter:
    if not is_url(path):
        return pq.ParquetWriter(path, schema)
    fs, fs_path = filesystem(path)
    return pq.ParquetWriter(fs_path, schema, filesystem=fs)


def read_parquet_metadata(path: str) -> pq.FileMetaData:
    """A Parquet file's footer; OSError (FileNotFoundError) when it does not exist."""
    if not is_url(path):
        return pq.read_metadata(path)
    fs, fs_path = filesystem(path)
    with fs.open(fs_path, "rb") as fh:
        return pq.read_metadata(fh)


def move(src: str, dst: str) -> None:
    """Publish a finished file under its final name: a rename locally, copy + delete on object stores."""
    if not is_url(dst):
        publish(src, dst)
        return
    fs, src_path = filesystem(src)
    fs.mv(src_path, filesystem(dst)[1])


def remove_if_exists(path: str) -> None:
    if not is_url(path):
        if os.path.exists(path):
            os.unlink(path)
        return
    fs, fs_path = filesystem(path)
    if fs.exists(fs_path):
        fs.rm(fs_path)


def list_files(root: str) -> list[str]:
    """Every file under a directory URL, as full URLs (protocol put back); empty when the root is missing."""
    fs, root_path = filesystem(root)
    fs.invalidate_cache()  # workers in other processes wrote here: a cached listing would miss their files
    try:
        found = fs.find(root_path)
    except FileNotFoundError:
        return []
    protocol = root.split("://", 1)[0]
    return [f"{protocol}://{p}" for p in found]
