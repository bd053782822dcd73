"""The converted-weight cache's folder (formats/weight_cache.py): one writer per entry, leftovers, bounds.

A writer holds an exclusive lock (flock) on its `<id>.bin.partial` for as long as it writes, so a
partial file whose lock can be taken belongs to a dead process and is removed at once; without
fcntl (Windows) a partial is judged by its age. Eviction removes least recently used entries (the
index's mtime is touched on every use).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: a partial file is judged by its age only
    fcntl = None

STALE_SECONDS = 3600  # leftovers untouched this long belong to no live load (partials too, without fcntl)


def claim(partial: Path):
    """Open `partial` for writing, exclusively and locked for as long as it is open; None if a live
    writer has it. A partial left by a dead process (its lock went with it) is removed first."""
    for _ in range(2):
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if not drop_stale(partial):
                return None
            continue
        except OSError:
            return None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(partial).st_ino:
                    raise OSError("taken over")  # removed as stale before we locked it: another writer's now
            except OSError:
                os.close(fd)
                return None
        return os.fdopen(fd, "wb")
    return None


def drop_stale(path: Path) -> bool:
    """Remove a leftover partial file whose writer is gone; True if it is gone now."""
    if fcntl is None:
        try:
            if time.time() - path.stat().st_mtime > STALE_SECONDS:
                path.unlink(missing_ok=True)
        except OSError:
            pass
        return not path.exists()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live writer: fails
        if os.fstat(fd).st_ino == os.stat(path).st_ino:  # still the file we locked, not a new writer's
            path.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def evict(root: Path, room: int) -> None:
    """Delete least recently used entries until the others take at most `room` bytes (and leftovers
    of interrupted writes: partial files of dead writers; data without an index, after an hour)."""
    for leftover in root.glob("*.partial"):
        drop_stale(leftover)
    orphans = [b for b in root.glob("*.bin") if not b.with_suffix(".json").exists()]  # renamed just before its index
    for old in orphans + list(root.glob("*.tmp")):
        try:
            if time.time() - old.stat().st_mtime > STALE_SECONDS:
                old.unlink(missing_ok=True)
        except OSError:
            pass
    entries = []
    for index in root.glob("*.json"):
        data = index.with_suffix(".bin")
        try:
            entries.append((index.stat().st_mtime, data.stat().st_size if data.exists() else 0, index, data))
        except OSError:
            continue
    total = sum(e[1] for e in entries)
    for _, size, index, data in sorted(entries):
        if total <= room:
            break
        index.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        total -= size
