"""A bundle that arrives as one plain .tar: screened header by header, then extracted by hand.

Screening refuses absolute paths, `..`, links, devices and duplicate names before any content is
read. Extraction writes each pinned member ourselves (no tarfile.extract) into ``<dest>.part``,
hashing as it goes, and renames the folder into place only when everything checked out, so a
refused tar leaves nothing behind. What the members must be (names, sizes, hashes) comes from the
signed manifest, which device_agents.bundle authenticates first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile

from device_agents.errors import AgentError

MAX_TAR_MEMBERS = 1000  # a bundle has a handful of files; a header flood is an attack


def _screen_member(m: tarfile.TarInfo) -> str:
    name = m.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise AgentError("tar_absolute_path", f"tar member {name!r} has an absolute path; refusing the bundle")
    norm = name[2:] if name.startswith("./") else name
    norm = norm.rstrip("/") if m.isdir() else norm
    if ".." in norm.split("/") or "\\" in norm:
        raise AgentError("tar_path_escape", f"tar member {name!r} climbs out of the bundle with '..'; refusing the bundle")
    if m.issym() or m.islnk():
        raise AgentError("tar_link", f"tar member {name!r} is a {'symbolic' if m.issym() else 'hard'} link "
                                     f"(to {m.linkname!r}); bundles hold regular files only")
    if not (m.isreg() or m.isdir()):
        raise AgentError("tar_special_file", f"tar member {name!r} is a device, fifo or other special file; refusing the bundle")
    return norm


def open_screened(tar_path: str) -> tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]:
    """Open a plain tar and screen every header; return it with its file members by normalised name."""
    try:
        tf = tarfile.open(tar_path, "r:")  # plain tar only: no decompression bombs
    except (tarfile.TarError, OSError) as e:
        raise AgentError("bad_tar", f"{tar_path}: not a plain .tar bundle ({e})")
    members: dict[str, tarfile.TarInfo] = {}
    try:
        for i, m in enumerate(tf):  # screen every header before reading any content
            if i >= MAX_TAR_MEMBERS:
                raise AgentError("bad_tar", f"{tar_path}: more than {MAX_TAR_MEMBERS} members; not a bundle")
            norm = _screen_member(m)
            if m.isdir() or norm == "":
                continue
            if norm in members:
                raise AgentError("tar_duplicate_member", f"tar member {m.name!r} appears twice; refusing the bundle")
            members[norm] = m
    except tarfile.TarError as e:
        tf.close()
        raise AgentError("bad_tar", f"{tar_path}: damaged tar ({e})")
    except BaseException:
        tf.close()
        raise
    return tf, members


def read_member(tf: tarfile.TarFile, members: dict, tar_path: str, name: str, limit: int, missing_code: str) -> bytes:
    """The bytes of a small member (manifest, signature), refusing one over `limit`."""
    m = members.get(name)
    if m is None:
        raise AgentError(missing_code, f"{tar_path}: no {name} in the tar; package it with 'edgekit package'")
    if m.size > limit:
        raise AgentError("bad_manifest", f"{tar_path}: {name} is {m.size} bytes, over the {limit}-byte limit")
    return tf.extractfile(m).read(limit + 1)


def check_members(members: dict, files: dict, ignore=()) -> None:
    """The tar holds exactly the pinned files (plus `ignore`), each of its pinned size."""
    for name, m in members.items():
        if name in ignore:
            continue
        if name not in files:
            raise AgentError("tar_unexpected_member", f"tar member {name!r} is not pinned by the signed manifest")
        if m.size != files[name].get("size"):
            raise AgentError("tar_size_mismatch",
                             f"tar member {name!r} is {m.size} bytes, the signed manifest says {files[name].get('size')}")
    for name in files:
        if name not in members:
            raise AgentError("missing_file", f"bundle file {name!r} is missing from the tar; re-package the bundle")


def extract(tf: tarfile.TarFile, members: dict, files: dict, dest: str, extra: dict, check) -> None:
    """Write the pinned `files` and the `extra` {name: bytes} into dest.part, run `check(part)`,
    then rename it to `dest`; on any failure nothing is left behind."""
    part = dest + ".part"
    shutil.rmtree(part, ignore_errors=True)
    os.makedirs(part)
    try:
        for name, meta in files.items():
            _copy_member(tf, members[name], part, name, meta)
        for name, data in extra.items():
            with open(os.path.join(part, name), "xb") as f:
                f.write(data)
        check(part)
        os.replace(part, dest)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise


def _copy_member(tf: tarfile.TarFile, member: tarfile.TarInfo, root: str, name: str, meta: dict) -> None:
    """Write one screened member below `root` ourselves (no tarfile.extract), hashing as it goes."""
    parent = root
    for part in name.split("/")[:-1]:
        parent = os.path.join(parent, part)
        if not os.path.isdir(parent):
            os.mkdir(parent, 0o755)
    src = tf.extractfile(member)
    h = hashlib.sha256()
    size = 0
    fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            size += len(chunk)
            if size > meta["size"]:
                raise AgentError("tar_size_mismatch", f"tar member {name!r} holds more bytes than the manifest's {meta['size']}")
            h.update(chunk)
            out.write(chunk)
    if size != meta["size"]:
        raise AgentError("tar_size_mismatch", f"tar member {name!r} is truncated ({size} of {meta['size']} bytes)")
    if h.hexdigest() != meta["sha256"]:
        raise AgentError("hash_mismatch", f"bundle file {name!r} does not match the sha256 the signed manifest "
                                          f"pins (corrupted or tampered); re-package the bundle")
