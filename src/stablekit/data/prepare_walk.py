"""Listing a source folder safely: symlink loops, broken links, FIFOs and devices are reported,
never followed forever or opened (opening a FIFO blocks)."""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Skip:
    """Why one file was not written: a short code for counting and a sentence for people."""
    code: str
    reason: str


def walk_sources(root: Path, exclude: Path | None = None) -> tuple[list[Path], list[tuple[Path, Skip]]]:
    """Regular files under `root` (following symlinks, sorted) and the entries that cannot be
    read as files, each with its Skip. `exclude` (the output folder, when it lies inside the
    source) is left out."""
    files: list[Path] = []
    skipped: list[tuple[Path, Skip]] = []
    root_stat = os.stat(root)
    _walk(root, {(root_stat.st_dev, root_stat.st_ino)}, set(), exclude, files, skipped)
    return files, skipped


def _walk(folder: Path, ancestors: set, visited: set, exclude, files, skipped) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        skipped.append((folder, Skip("unreadable", f"cannot list the folder ({exc.strerror})")))
        return
    for entry in entries:
        path = Path(entry.path)
        if exclude is not None and path == exclude:
            continue
        try:
            st = os.stat(path)  # follows symlinks
        except OSError as exc:
            skipped.append((path, _stat_failure(path, exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                skipped.append((path, Skip("symlink-loop", f"symlink loop: leads back to the folder "
                                                           f"{os.path.realpath(path)} above it")))
            elif key in visited:
                skipped.append((path, Skip("symlink-loop", f"folder already read through another path "
                                                           f"({os.path.realpath(path)})")))
            else:
                visited.add(key)
                _walk(path, ancestors | {key}, visited, exclude, files, skipped)
        elif stat.S_ISREG(st.st_mode):
            files.append(path)
        else:
            kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device"
            skipped.append((path, Skip("not-a-file", f"not a regular file ({kind})")))


def _stat_failure(path: Path, exc: OSError) -> Skip:
    if exc.errno == errno.ELOOP:
        return Skip("symlink-loop", "symlink loop: the link resolves to itself")
    if os.path.islink(path):
        return Skip("broken-symlink", f"broken symlink to {os.readlink(path)}")
    return Skip("unreadable", f"cannot read ({exc.strerror})")
