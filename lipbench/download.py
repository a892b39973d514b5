"""Downloading a dataset archive with checksum verification, and unpacking it (tar or zip) safely."""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lipbench.errors import UserError


@dataclass(frozen=True)
class Archive:
    """A downloadable archive: where it lives, its checksum (``md5`` or ``sha256``), the folder it unpacks to,
    and the environment variable that names a mirror replacing its host."""

    url: str
    checksum: str
    folder: str
    mirror_variable: str
    algorithm: str = "md5"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def download(archive: Archive, target: Path) -> Path:
    """Download ``archive`` into ``target``, verifying its checksum; nothing is kept when it does not match."""
    mirror = os.environ.get(archive.mirror_variable)
    url = f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {target} for the download: {error.strerror}") from None
    digest = hashlib.new(archive.algorithm)
    partial = None
    try:
        with urllib.request.urlopen(url, timeout=30) as response, \
                tempfile.NamedTemporaryFile(dir=target, prefix=f".{archive.filename}.", delete=False) as stream:
            partial = Path(stream.name)
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                stream.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise UserError(f"{archive.filename} is missing and downloading {url} failed ({error}); "
                        f"download it yourself into {target} or pass --data-dir") from None
    if digest.hexdigest() != archive.checksum:
        partial.unlink(missing_ok=True)
        raise UserError(f"checksum mismatch for {url}: got {archive.algorithm} {digest.hexdigest()}, expected "
                        f"{archive.checksum}; the download is corrupt or not the official archive (nothing was kept)")
    destination = target / archive.filename
    os.replace(partial, destination)
    return destination


def extract(path: Path, archive: Archive, target: Path) -> Path:
    """Unpack the regular files under ``archive.folder/`` of the tar at ``path`` into ``target``.

    Members are filtered as data (no links out, no absolute paths, no device files); a member that would
    land outside ``target`` is refused with one line naming it.
    """
    try:
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(archive.folder + "/") and m.isfile()]
            if not members:
                raise UserError(f"{path} does not contain {archive.folder}/: not the expected archive")
            tar.extractall(target, members=members, filter="data")
    except tarfile.FilterError as error:
        raise UserError(f"{path}: refused to unpack {error.tarinfo.name!r}, which would land outside {target}") from None
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UserError(f"cannot unpack {path}: {error}; the archive is corrupt, delete it and download it again") from None
    return target / archive.folder


def extract_zip(path: Path, archive: Archive, target: Path) -> Path:
    """Unpack the regular files under ``archive.folder/`` of the zip at ``path`` into ``target``; a member
    with an absolute path or ``..`` is refused with one line naming it."""
    try:
        with zipfile.ZipFile(path) as bundle:
            members = [m for m in bundle.infolist() if m.filename.startswith(archive.folder + "/") and not m.is_dir()]
            if not members:
                raise UserError(f"{path} does not contain {archive.folder}/: not the expected archive")
            for member in members:
                parts = Path(member.filename).parts
                if Path(member.filename).is_absolute() or ".." in parts:
                    raise UserError(f"{path}: refused to unpack {member.filename!r}, which would land outside {target}")
            bundle.extractall(target, members=members)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise UserError(f"cannot unpack {path}: {error}; the archive is corrupt, delete it and download it again") from None
    return target / archive.folder
