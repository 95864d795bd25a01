"""Reading a crate back: re-verifying its checksums and zipping it for deposit."""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolora.errors import ChecksumError, ConfigError, DataError
from autolora.files import HASH_CHUNK_BYTES, atomic_path, read_json, sha256_file
from autolora.planning import layout
from autolora.reporting.crate.vocabulary import (
    ARCHIVE_TIME,
    LARGE_SUFFIXES,
)


@dataclass
class CrateAudit:
    """What ``verify_crate`` found: problems name the file and what differs."""

    problems: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # referenced files not present here

    @property
    def ok(self) -> bool:
        return not self.problems


def load_crate(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / layout.CRATE_METADATA
    if not path.is_file():
        raise ConfigError(f"{path} missing: write the crate first with `autolora crate {folder}`")
    crate = read_json(path)
    if not isinstance(crate, dict) or not isinstance(crate.get("@graph"), list):
        raise DataError(
            f"{path}: not RO-Crate JSON-LD (no @graph); rewrite it with `autolora crate`"
        )
    return crate


def described_files(crate: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every File entity of the crate with a sha256, in the crate or referenced by localPath."""
    files = []
    for entity in crate["@graph"]:
        types = entity.get("@type")
        types = types if isinstance(types, list) else [types]
        if "File" in types and entity.get("sha256"):
            identifier = entity["@id"]
            if identifier.startswith("#"):
                if entity.get("localPath"):
                    files.append(
                        {
                            "path": entity["localPath"],
                            "sha256": entity["sha256"],
                            "in_crate": False,
                            "id": identifier,
                        }
                    )
            elif not re.match(r"^[a-z][a-z0-9+.-]*:", identifier):
                files.append(
                    {
                        "path": identifier,
                        "sha256": entity["sha256"],
                        "in_crate": True,
                        "id": identifier,
                    }
                )
    return files


def verify_crate(folder: str | Path) -> CrateAudit:
    """Re-hash every file the crate describes. A file in the crate must be there and match; a
    referenced file (checkpoint, prepared data) must match where it is present."""
    folder = Path(folder)
    audit = CrateAudit()
    for item in described_files(load_crate(folder)):
        file = folder / item["path"]
        if not file.is_file():
            if item["in_crate"]:
                audit.problems.append(
                    f"{file}: missing (the crate describes it, sha256 {item['sha256'][:12]})"
                )
            else:
                audit.absent.append(str(file))
            continue
        digest = sha256_file(file)
        if digest != item["sha256"]:
            audit.problems.append(
                f"{file}: sha256 mismatch (the crate records {item['sha256'][:12]}, found "
                f"{digest[:12]}) — the file changed after the crate was written"
            )
        else:
            audit.verified.append(str(file))
    return audit


def write_archive(
    folder: str | Path, out: str | Path, *, with_checkpoints: bool = False
) -> list[str]:
    """One zip for deposit: the metadata and every file in the crate, and with
    ``with_checkpoints`` the referenced checkpoints that lie inside the folder, each verified
    against the crate's sha256 as it is read. Entries are sorted and time-stamped alike, so the
    same crate gives the same archive. Returns the archived paths."""
    folder, out = Path(folder), Path(out)
    crate = load_crate(folder)
    chosen = [layout.CRATE_METADATA]
    digests = {}
    for item in described_files(crate):
        inside = not Path(item["path"]).is_absolute() and not Path(
            item["path"]
        ).as_posix().startswith("../")
        if item["in_crate"] or (
            with_checkpoints and inside and item["path"].endswith(LARGE_SUFFIXES)
        ):
            chosen.append(Path(item["path"]).as_posix())
            digests[Path(item["path"]).as_posix()] = item["sha256"]
    chosen = [chosen[0], *sorted(set(chosen[1:]))]
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in chosen:
            file = folder / name
            if not file.is_file():
                raise DataError(
                    f"{file}: missing, though the crate describes it; rerun the workflow and "
                    f"`autolora crate {folder}`"
                )
            info = zipfile.ZipInfo(name, date_time=ARCHIVE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            digest = hashlib.sha256()
            with open(file, "rb") as source, archive.open(info, "w") as target:
                for chunk in iter(lambda: source.read(HASH_CHUNK_BYTES), b""):
                    digest.update(chunk)
                    target.write(chunk)
            if name in digests and digest.hexdigest() != digests[name]:
                raise ChecksumError(
                    f"{file}: sha256 {digest.hexdigest()[:12]} differs from the crate's "
                    f"{digests[name][:12]}; the file changed after the crate was written: rerun "
                    f"`autolora crate {folder}`"
                )
    return chosen
