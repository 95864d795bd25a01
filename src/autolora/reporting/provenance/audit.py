"""``Audit``: what an audit found, in words and as problems; every file hashed once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autolora.errors import DataError
from autolora.files import md5_file, read_json, sha256_file

# --------------------------------------------------------------------------------------------
# Auditing


@dataclass
class Audit:
    """Accumulates the plain-language chain and every problem found; hashes each file once."""

    root: Path
    # (arch, rank, lora_blocks) -> autolora.models.parameter_counts(...); lets the audit recount
    # Table 3's parameters on the built model (this module does not import torch)
    count_parameters: Callable[[str, int, str], Mapping[str, Any]] | None = None
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    verified: int = 0  # hash checks that passed (a file checked twice counts twice)
    _hashes: dict[str, str] = field(default_factory=dict)
    _json: dict[str, Any] = field(default_factory=dict)  # path -> its JSON, read once
    _cells_done: set[str] = field(default_factory=set)
    _done: set[str] = field(default_factory=set)  # datasets and backbones audited above

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rehashed(self) -> int:
        """Distinct files whose bytes were hashed."""
        return len(self._hashes)

    def read_json(self, path: str) -> Any:
        """The JSON of a file on the chain (``path`` relative to the root), read once per audit;
        a damaged file is a DataError."""
        if path not in self._json:
            self._json[path] = read_json(self.root / path)
        return self._json[path]

    def load_json(self, path: str, indent: int = 2) -> Any:
        """The JSON of a file on the chain, or None (and a problem) when it is unreadable."""
        try:
            return self.read_json(path)
        except (OSError, DataError) as error:
            self.problem(f"{path}: unreadable ({error})", indent)
            return None

    def first_time(self, key: str) -> bool:
        if key in self._done:
            return False
        self._done.add(key)
        return True

    def say(self, text: str, indent: int = 0) -> None:
        self.lines.append("  " * indent + text)

    def problem(self, text: str, indent: int = 0) -> None:
        self.problems.append(text)
        self.say("PROBLEM: " + text, indent)

    def check_file(self, role: str, path: str | None, expected: str | None, indent: int) -> bool:
        """Re-hash ``path`` and compare with ``expected``; True when it matches."""
        if not path:
            self.problem(f"{role}: no path recorded", indent)
            return False
        file = self.root / path
        if file.is_dir():
            self.say(f"{role} {path}: a directory, exists (not hashed)", indent)
            return True
        if not file.is_file():
            self.problem(
                f"{path}: missing ({role}; recorded sha256 {short_digest(expected)})", indent
            )
            return False
        if expected is None:
            self.say(f"{role} {path}: exists, no sha256 recorded", indent)
            return True
        actual = self._sha256(file)
        if actual != expected:
            self.problem(
                f"{path}: sha256 mismatch ({role}; recorded {short_digest(expected)}, "
                f"found {short_digest(actual)}) — the file changed after it was recorded",
                indent,
            )
            return False
        self.verified += 1
        self.say(f"{role} {path}: sha256 {short_digest(actual)} verified", indent)
        return True

    def _sha256(self, file: Path) -> str:
        key = str(file.resolve())
        if key not in self._hashes:
            self._hashes[key] = sha256_file(file)
        return self._hashes[key]

    def check_archive(self, role: str, path: str, algorithm: str, expected: str, indent: int):
        """Re-hash a downloaded archive or checkpoint when it is still present (it is only needed
        to prepare or convert); say so when it is not."""
        file = self.root / path
        if not file.is_file():
            self.say(
                f"{role} {path}: not present (only needed to prepare or convert); recorded "
                f"{algorithm} {short_digest(expected)}",
                indent,
            )
            return
        if algorithm == "sha256":
            self.check_file(role, path, expected, indent)
            return
        key = f"md5:{file.resolve()}"
        if key not in self._hashes:
            self._hashes[key] = md5_file(file)
        if self._hashes[key] != expected:
            self.problem(
                f"{path}: md5 mismatch ({role}; recorded {short_digest(expected)}, found "
                f"{short_digest(self._hashes[key])}) — the archive is not the published one",
                indent,
            )
            return
        self.verified += 1
        self.say(f"{role} {path}: md5 {short_digest(expected)} verified", indent)


def short_digest(digest: str | None) -> str:
    return "none" if not digest else digest[:12]
