"""Unpacking downloaded archives safely (tar, tar.gz, tar.xz, tar.bz2 and zip alike).

Every member is checked before a byte is written; one refused member refuses the archive:
- a name that is absolute, has a drive letter, a ``..`` part or a NUL;
- a symlink whose target is absolute or leaves the root, a hardlink to anything but an
  earlier file of the archive, and any member written through a link of the archive;
- a device, FIFO or other special file;
- a total unpacked size over the limit (by default 100× the archive, at least 1 GiB): a
  decompression bomb. The sizes the headers declare are checked first, and the bytes actually
  written are counted too, so a header that lies is caught as well.
Members are written into a staging folder beside the root, and moved into the root only when
the whole archive unpacked: a refusal leaves the root as it was. Files moved in never pass
through a symlink that is already in the root.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .errors import UserError

RATIO_LIMIT = 100  # unpacked bytes per archive byte
MIN_LIMIT = 1 << 30
CHUNK = 1 << 20
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


@dataclass(frozen=True)
class Member:
    name: str  # normalised relative posix path
    kind: str  # file | dir | symlink | hardlink
    size: int = 0
    target: str = ""  # symlink: as stored; hardlink: the normalised name it points to


def archive_kind(path: Path) -> str:
    """``tar``, ``zip``, or ``file`` (kept as downloaded, e.g. MNIST's ``.gz`` files, read gzipped)."""
    name = path.name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    return "zip" if name.endswith(".zip") else "file"


def unpack_limit(archives: list[Path]) -> int:
    return max(MIN_LIMIT, RATIO_LIMIT * sum(p.stat().st_size for p in archives))


def safe_name(raw: str, archive: Path) -> str:
    """The member's normalised relative path, or a UserError naming it."""
    if "\x00" in raw:
        raise refused(archive, raw, "its name holds a NUL byte")
    if raw.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", raw):
        raise refused(archive, raw, "its path is absolute")
    parts = [p for p in re.split(r"[/\\]", raw) if p not in ("", ".")]
    if ".." in parts:
        raise refused(archive, raw, "its path climbs out with '..'")
    return "/".join(parts)


def refused(archive: Path, member: str, why: str) -> UserError:
    return UserError(f"{archive.name}: refused member {member!r}: {why}; nothing was unpacked", file=str(archive))


def tar_members(tar: tarfile.TarFile, archive: Path) -> list[tuple[Member, tarfile.TarInfo]]:
    found = []
    for info in tar.getmembers():
        name = safe_name(info.name, archive)
        if info.isreg():
            member = Member(name, "file", info.size)
        elif info.isdir():
            member = Member(name, "dir")
        elif info.issym():
            member = Member(name, "symlink", target=info.linkname)
        elif info.islnk():
            member = Member(name, "hardlink", target=safe_name(info.linkname, archive))
        else:
            raise refused(archive, info.name, "it is a device, FIFO or other special file")
        found.append((member, info))
    return found


def zip_members(zf: zipfile.ZipFile, archive: Path) -> list[tuple[Member, zipfile.ZipInfo]]:
    found = []
    for info in zf.infolist():
        name = safe_name(info.filename, archive)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)  # 0 when the writer stored permissions only (a plain file or folder)
        if stat.S_ISLNK(mode):
            if info.file_size > 4096:
                raise refused(archive, info.filename, "a symlink with an implausibly long target")
            member = Member(name, "symlink", target=zf.read(info).decode("utf-8", "replace"))
        elif kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise refused(archive, info.filename, "it is a device, FIFO or other special file")
        elif info.is_dir():
            member = Member(name, "dir")
        else:
            member = Member(name, "file", info.file_size)
        found.append((member, info))
    return found


def check_members(members: list[Member], archive: Path, limit: int) -> None:
    """Refuse links that leave the root, writes through links, and a bomb (declared sizes)."""
    files, links = set(), set()
    for m in members:
        parents = {"/".join(m.name.split("/")[:i]) for i in range(1, m.name.count("/") + 1)}
        if parents & links:
            raise refused(archive, m.name, "it would be written through a link of the archive")
        if m.kind == "symlink":
            target = m.target
            inside = os.path.normpath(os.path.join(os.path.dirname(m.name), target))
            if target.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", target) or inside == ".." or inside.startswith("../"):
                raise refused(archive, m.name, f"a symlink to {target!r}, outside the root")
            links.add(m.name)
        elif m.kind == "hardlink":
            if m.target not in files:
                raise refused(archive, m.name, f"a hardlink to {m.target!r}, not an earlier file of the archive")
            links.add(m.name)
        elif m.kind == "file":
            files.add(m.name)
    total = sum(m.size for m in members if m.kind == "file")
    if total > limit:
        raise UserError(f"{archive.name}: would unpack to {total:,} bytes, over the limit of {limit:,} "
                        f"({RATIO_LIMIT}× the archive, at least {MIN_LIMIT:,}): a decompression bomb? nothing was unpacked",
                        file=str(archive))


class Budget:
    """Counts the bytes actually written across the archives of one install."""

    def __init__(self, limit: int, archive: Path):
        self.limit, self.used, self.archive = limit, 0, archive

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise UserError(f"{self.archive.name}: unpacked more than {self.limit:,} bytes though its headers declared less: "
                            "a decompression bomb? nothing was unpacked", file=str(self.archive))


def write_stream(source, path: Path, budget: Budget) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        while chunk := source.read(CHUNK):
            budget.take(len(chunk))
            out.write(chunk)


def unpack_into(archive: Path, staging: Path, keep: Callable[[str], bool], budget: Budget) -> None:
    """Check every member of ``archive``, then write the kept ones under ``staging``."""
    kind = archive_kind(archive)
    if kind == "file":
        with open(archive, "rb") as source:
            write_stream(source, staging / archive.name, budget)
        return
    try:
        opener = tarfile.open(archive) if kind == "tar" else zipfile.ZipFile(archive)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise UserError(f"{archive.name}: not a readable {kind} archive ({err})", file=str(archive)) from err
    with opener as handle:
        pairs = tar_members(handle, archive) if kind == "tar" else zip_members(handle, archive)
        check_members([m for m, _ in pairs], archive, budget.limit - budget.used)
        for member, info in pairs:
            if not keep(member.name):
                continue
            path = staging / member.name
            if member.kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
            elif member.kind == "symlink":
                path.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(member.target, path)
            elif member.kind == "hardlink":
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(staging / member.target, path)
            else:
                with (handle.extractfile(info) if kind == "tar" else handle.open(info)) as source:
                    write_stream(source, path, budget)


def install(archives: list[Path], root: Path, *, strip: str = "", keep: Callable[[str], bool] = lambda name: True,
            limit: int | None = None) -> int:
    """Unpack ``archives`` (in order) and move what they hold under ``root``, dropping the
    leading folder ``strip``; ``keep(name)`` (the name below ``strip``) picks members.
    Returns the number of files placed. On any refusal the root is left as it was."""
    limit = unpack_limit(archives) if limit is None else limit
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.unpacking.", dir=root.parent))
    try:
        prefix = strip.strip("/") + "/" if strip else ""
        for archive in archives:
            budget = Budget(limit, archive)
            unpack_into(archive, staging, partial(kept_below, prefix, keep), budget)
            limit -= budget.used
        source = staging / strip if strip else staging
        if not source.is_dir():
            raise UserError(f"the archive holds no folder {strip!r} (the layout this dataset's download expects)",
                            file=str(archives[0]))
        return move_tree(source, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def kept_below(prefix: str, keep: Callable[[str], bool], name: str) -> bool:
    """Whether the member ``name`` is unpacked: under ``prefix`` and kept (or ``prefix`` itself)."""
    return name + "/" == prefix or (name.startswith(prefix) and keep(name[len(prefix):]))


def move_tree(source: Path, root: Path) -> int:
    """Move every file and link under ``source`` to the same place under ``root``; refuse a
    destination whose folder is (or passes through) a symlink already in the root."""
    root.mkdir(parents=True, exist_ok=True)
    real_root = root.resolve()
    moved = []
    for path in sorted(source.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        dest = root / path.relative_to(source)
        existing = next(p for p in (dest.parent, *dest.parent.parents) if p.exists() or p.is_symlink())
        if existing.resolve() != real_root and real_root not in existing.resolve().parents:
            raise UserError(f"{str(existing)!r} leads outside {str(root)!r} through a symlink already there; "
                            "remove it and download again", key="--root")
        dest.parent.mkdir(parents=True, exist_ok=True)
        moved.append((path, dest))
    for path, dest in moved:
        if dest.is_dir() and not dest.is_symlink():
            raise UserError(f"{str(dest)!r} is a folder where the archive has a file; remove it and download again", key="--root")
        os.replace(path, dest)
    return len(moved)
