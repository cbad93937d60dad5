"""Crash-safe adapter writes: several files replaced as one commit.

    1. write every new file to a temporary name beside its target and fsync it
    2. write the journal `.surgery-commit.json` (atomically) naming each (temporary, target) pair
    3. os.replace each temporary file over its target, fsync the folder
    4. delete the journal

A process killed before step 2 leaves the previous adapter intact (stray temporaries are swept later); one
killed during step 3 leaves a journal, and `recover()` — run by every surgery save and load of that folder —
finishes the renames, so the folder holds the new adapter complete. Either way, never a mix.
An exclusive flock on the folder serialises writers of the same folder (two processes saving the same adapter).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

JOURNAL = ".surgery-commit.json"
TMP_PREFIX = ".surgery-tmp-"


@contextlib.contextmanager
def folder_lock(directory: Path):
    """flock on the folder itself: no lock file is left in the adapter folder."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def recover(directory: Path) -> None:
    """Finish an interrupted commit (roll forward) and sweep temporaries no journal names."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    journal = directory / JOURNAL
    named: set[str] = set()
    if journal.is_file():
        try:
            pairs = json.loads(journal.read_text())
        except (OSError, ValueError):
            pairs = []  # a torn journal: step 2 never completed, so no target was touched
        for tmp, target in pairs:
            named.add(tmp)
            if (directory / tmp).is_file():
                os.replace(directory / tmp, directory / target)
        _fsync_dir(directory)
        journal.unlink(missing_ok=True)
    for stray in directory.glob(f"{TMP_PREFIX}*"):
        if stray.name not in named:
            stray.unlink(missing_ok=True)


def commit_files(directory: Path, writers: dict[str, Callable[[str], None]]) -> None:
    """Write {file name: writer(tmp_path)} into `directory` as one crash-safe commit."""
    directory = Path(directory)
    with folder_lock(directory):
        recover(directory)
        pairs = []
        try:
            for name, write in writers.items():
                fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{name}.", dir=directory)
                os.close(fd)
                pairs.append((os.path.basename(tmp), name))
                write(tmp)
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
        except BaseException:
            for tmp, _ in pairs:
                (directory / tmp).unlink(missing_ok=True)
            raise
        _write_journal(directory, pairs)
        for tmp, name in pairs:
            os.replace(directory / tmp, directory / name)
        _fsync_dir(directory)
        (directory / JOURNAL).unlink()


def _write_journal(directory: Path, pairs) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}journal.", dir=directory)
    with os.fdopen(fd, "w") as handle:
        json.dump(pairs, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / JOURNAL)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
