"""Fetch corpus files over HTTP(S), verify their SHA-256, unpack archives, and never leave a partial file behind."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from lm.errors import DataError

_CHUNK = 1 << 16


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest``; on any failure ``dest`` is untouched and no temp file remains.

    The bytes go to a temporary file in the destination folder and are renamed into place only
    after the checksum matched, so an interrupted or corrupt download can never be mistaken for data.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
        # A connection dropped mid-body ends the read loop quietly; the length tells.
        if expected is not None and received != int(expected):
            raise DataError(f"could not download {url}: interrupted after {received} of {expected} bytes.")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest.hexdigest()}. "
                f"The download is corrupt or not the standard file; nothing was written to {dest}."
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DataError(f"could not download {url} to {dest}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def extract(archive: Path, names: list[str], folder: Path) -> None:
    """Write the members of the zip ``archive`` whose file names are ``names`` into ``folder`` (flat,
    whatever folder they sit in inside the archive). Each goes through a temporary file and a rename,
    so an interrupted extraction leaves no partial file; members already in ``folder`` are kept."""
    wanted = [n for n in names if not (folder / n).is_file()]
    if not wanted:
        return
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m).name: m for m in zf.namelist() if not m.endswith("/")}
            for name in wanted:
                if name not in members:
                    raise DataError(f"{archive} has no member {name}; it holds {sorted(members)}.")
                fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
                try:
                    with os.fdopen(fd, "wb") as out, zf.open(members[name]) as src:
                        for chunk in iter(lambda: src.read(_CHUNK), b""):
                            out.write(chunk)
                    os.replace(tmp_name, folder / name)
                finally:
                    Path(tmp_name).unlink(missing_ok=True)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive} is not a valid zip archive ({exc}); delete it to download it again.") from exc
