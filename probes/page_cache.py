"""The page cache, file by file: evict a dataset's files from it and read how much of them it holds.

Why: the input ceiling's loaders read each image many times within a few hundred batches, so after
the first pass they time the page cache, not the disk. A run over a dataset larger than the memory
the machine can spare reads every image from storage every epoch. To time that case the probe
evicts the files first, with `posix_fadvise(POSIX_FADV_DONTNEED)`: advice, needing no privileges,
which a file system may ignore (tmpfs keeps its only copy; a page mapped by another process stays).
So the eviction is checked with `mincore` on a fresh mapping of each file, which reports the page
cache's state, not this process's: on Linux >= 5.2 only for files the caller owns or may write (or
as root), so elsewhere residency is None (unverified), never assumed.

Pure standard library (ctypes for mmap/mincore). Linux; elsewhere every reading is None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
SAMPLE_FILES = 256  # residency is read on at most this many files, evenly spaced: enough for a fraction
READ_CHUNK = 1 << 20


def _libc():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def can_see(path: str) -> bool:
    """Whether mincore reports this file's page-cache pages to us (Linux >= 5.2: owner, writer or root)."""
    try:
        return os.geteuid() == 0 or os.stat(path).st_uid == os.geteuid() or os.access(path, os.W_OK)
    except OSError:
        return False


def resident_pages(path: str) -> Optional[tuple[int, int]]:
    """(pages in the page cache, pages) of one file; None where mincore cannot tell (see can_see)."""
    if _LIBC is None or not can_see(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, 0
        addr = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            return None
        try:
            pages = (size + PAGE_BYTES - 1) // PAGE_BYTES
            vec = (ctypes.c_ubyte * pages)()
            if _LIBC.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            return sum(v & 1 for v in vec), pages
        finally:
            _LIBC.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def sample(paths: Sequence[str], limit: int = SAMPLE_FILES) -> list[str]:
    """At most `limit` of the paths, evenly spaced (all of them when there are fewer)."""
    if len(paths) <= limit:
        return list(paths)
    step = len(paths) / limit
    return [paths[int(i * step)] for i in range(limit)]


def resident_frac(paths: Sequence[str], limit: int = SAMPLE_FILES) -> Optional[float]:
    """Share of the sampled files' pages in the page cache; None where none of them could be read."""
    hit = total = 0
    seen = False
    for p in sample(paths, limit):
        try:
            r = resident_pages(p)
        except OSError:
            r = None
        if r is None:
            continue
        seen = True
        hit, total = hit + r[0], total + r[1]
    if not seen:
        return None
    return hit / total if total else 0.0


@dataclass
class Eviction:
    files: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)  # "path: why" of files that could not be advised
    resident_frac_after: Optional[float] = None  # sampled; None: unverified (see can_see)


def _drop(fd: int) -> None:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def evict(paths: Iterable[str], verify_limit: int = SAMPLE_FILES) -> Eviction:
    """posix_fadvise(DONTNEED) on every file, then read back how much of a sample is still cached.

    A file still cached after the advice may hold dirty pages (written moments ago and not yet on disk:
    DONTNEED only drops clean ones); it is flushed (fdatasync) and advised again, once. Pages the kernel
    held in a per-CPU batch or under writeback at that moment survive the advice too, so where the sample
    still finds some, every file is advised once more (the whole set, so the sample stays a fair one)."""
    out = Eviction()
    paths = list(paths)
    if not hasattr(os, "posix_fadvise"):
        out.errors.append("posix_fadvise is not available on this platform")
        return out
    _advise_all(paths, out)
    out.resident_frac_after = resident_frac(paths, verify_limit)
    if out.resident_frac_after:
        again = Eviction()
        _advise_all(paths, again)
        out.resident_frac_after = resident_frac(paths, verify_limit)
    return out


def _advise_all(paths: list[str], out: Eviction) -> None:
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError as exc:
            out.errors.append(f"{p}: {exc.strerror or exc}")
            continue
        try:
            out.bytes += os.fstat(fd).st_size
            _drop(fd)
            left = resident_pages(p) if can_see(p) else None
            if left is not None and left[0]:
                os.fdatasync(fd)
                _drop(fd)
            out.files += 1
        except OSError as exc:
            out.errors.append(f"{p}: {exc.strerror or exc}")
        finally:
            os.close(fd)


def read_back(paths: Iterable[str]) -> int:
    """Read every file once (what a first epoch does), so the page cache holds them again; bytes read."""
    n = 0
    for p in paths:
        try:
            with open(p, "rb", buffering=0) as f:
                while chunk := f.read(READ_CHUNK):
                    n += len(chunk)
        except OSError:
            continue
    return n
