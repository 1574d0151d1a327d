"""Files written whole or not at all, temporary files named for their writer, and content digests.

Torch-free: the completion stamp, the results store, the cache and the adapters' checkpoint
digests share them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
TEMP_SUFFIX = ".partial"  # temporary files and folders: .<name>.<pid>.<random>.partial


def shareable(path: Path, mode: int) -> None:
    """Give what mkstemp/mkdtemp made private (0600/0700) the user's umask, as open() would:
    a cache or output folder on a shared filesystem stays usable by the group."""
    os.chmod(path, mode & ~UMASK)


def temp_name(name: str) -> tuple[str, str]:
    """(prefix, suffix) for a temporary sibling of ``name``, marked with this process's pid."""
    return f".{name}.{os.getpid()}.", TEMP_SUFFIX


def process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs on this host (one we may not signal still runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def remove_orphans(root: Path) -> int:
    """Delete temporary files and folders under ``root`` left by killed processes of this
    host (their pid is gone); returns how many."""
    removed = 0
    for path in root.rglob(f".*{TEMP_SUFFIX}") if root.is_dir() else ():
        try:
            pid = int(path.name.rsplit(".", 3)[-3])
        except (ValueError, IndexError):
            continue  # not one of ours
        if not process_gone(pid):
            continue  # its writer is alive
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.warning("removed %d temporary file(s) left by killed runs under %s", removed, root)
    return removed


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: all or nothing.
    ``durable``: fsync before the rename, so even a machine crash leaves the old or the new
    file; the cache passes False (a cache file a crash truncates is reported as corrupt and
    computed again, and an fsync per small file costs more than a trivial cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temp_name(path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        shareable(Path(tmp), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digests(path: Path, kinds: tuple[str, ...]) -> dict[str, str]:
    """Hex digests of a file's content by each hashlib algorithm in ``kinds``, in one read."""
    hashes = {kind: hashlib.new(kind) for kind in kinds}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            for h in hashes.values():
                h.update(chunk)
    return {kind: h.hexdigest() for kind, h in hashes.items()}


def file_sha256(path: Path, memo: Path | None = None) -> str:
    """sha256 of a file's content, remembered in ``memo`` (a JSON file) per path, mtime and
    size, so a large checkpoint is hashed once — and again as soon as it is replaced."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
    try:
        table = json.loads(memo.read_text()) if memo is not None and memo.is_file() else {}
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = file_digests(path, ("sha256",))["sha256"]
        if memo is not None:
            atomic_write_bytes(memo, json.dumps(table, indent=0).encode())
    return table[key]
