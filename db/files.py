"""Owner-only files: the home folder (0700) and the database (0600).

The database holds Argon2 password hashes, session-token hashes, every comment and better answer,
and the browser key sits beside it; on a shared machine none of that is for other local users.
SQLite creates the ``-wal`` and ``-shm`` files with the database file's own mode, so making the
database 0600 before SQLite first opens it covers them too.

Example: make_private_home(Path("prefloop-data/prefloop.db"))
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def make_private_home(database: Path, tighten_folder: bool = True) -> None:
    """Create the database's folder 0700 and the database file 0600; tighten looser ones we own.

    ``tighten_folder``: also chmod an existing folder (the home: yes; the folder a backup or a
    copy is written into: no, that folder is the user's). A folder above (``/tmp``, a user's
    home) is never touched.
    """
    folder = database.parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=FOLDER_MODE)
    except FileExistsError:
        if tighten_folder:
            _tighten(folder, FOLDER_MODE)
    create_private_file(database)
    for suffix in ("-wal", "-shm"):
        sidecar = database.with_name(database.name + suffix)
        if sidecar.exists():
            _tighten(sidecar, FILE_MODE)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (before SQLite opens it), or tighten it if it exists."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        _tighten(path, FILE_MODE)
    for suffix in ("-wal", "-shm", "-journal"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            _tighten(sidecar, FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    """chmod to ``mode`` when ``path`` is ours and allows group or others anything."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, mode)
