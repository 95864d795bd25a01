"""Atomic writes leave either the old file or the complete new one, readable like open()'s."""

import os
import stat

import pytest

from autolora.io import atomic_write, read_json, sha256_file, write_json


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    write_json(target, {"value": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write('{"value": 2')
        raise RuntimeError("crash mid-write")
    assert read_json(target) == {"value": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_atomic_write_gives_the_umask_mode_not_mkstemps_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", [1])
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
