"""Atomic writes leave either the old file or the complete new one, readable like open()'s."""

import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from autolora.errors import DataError, StorageError
from autolora.files import atomic_write, read_json, sha256_file, write_json


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


def test_a_full_disk_is_one_clear_error_and_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    write_json(target, {"value": 1})

    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError) as error, atomic_write(target) as handle:
        FullDisk().write(handle)
    message = str(error.value)
    assert str(target) in message and "No space left on device" in message
    assert "free space" in message and "\n" not in message
    assert read_json(target) == {"value": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_damaged_json_is_one_line_naming_the_file_and_the_fix(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"epoch": 3, "hist')
    with pytest.raises(DataError) as error:
        read_json(path, "delete the state to start over")
    message = str(error.value)
    assert message.startswith(f"{path} is not valid JSON") and "truncated" in message
    assert message.endswith("delete the state to start over") and "\n" not in message


def test_equal_data_gives_equal_bytes(tmp_path):
    first = {"b": [0.1, 1e-7, float("inf")], "a": {"z": 1, "y": "ü"}}
    second = {"a": {"y": "ü", "z": 1}, "b": [0.1, 1e-7, float("inf")]}
    assert write_json(tmp_path / "1.json", first) == write_json(tmp_path / "2.json", second)
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs user namespaces to mount a tmpfs")
def test_a_really_full_file_system_gives_one_line_and_no_partial_file(tmp_path):
    """`autolora data synthesize` into a nearly full 256 KiB tmpfs (private mount namespace)."""
    script = (
        'mount -t tmpfs -o size=256k tmpfs "$1" || exit 9; '
        'dd if=/dev/zero of="$1/filler" bs=1k count=200 2>/dev/null; '
        'cd "$1"; "$2" -m autolora.cli data synthesize --out data/synth --num-classes 4 '
        "--train 400 --test 100 --image-size 16 --seed 1 --name synth; status=$?; "
        "echo left: $(find . -mindepth 1 | sort); exit $status"
    )
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(mount_point), sys.executable],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left to write data/synth" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.split() == ["left:", "./data", "./filler"]  # no partial dataset


def test_prepared_dataset_of_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    """The same through a failing write: the half-written dataset folder is removed."""
    from autolora.data import prepared
    from autolora.data.synthetic import write_synthetic_dataset

    real_open = open

    def full_after_header(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith("images.u8"):
            handle.write = lambda data: (_ for _ in ()).throw(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            )
        return handle

    monkeypatch.setattr(prepared, "open", full_after_header, raising=False)
    with pytest.raises(StorageError, match="no space left"):
        write_synthetic_dataset(
            tmp_path / "data",
            name="synth",
            num_classes=2,
            train_size=8,
            test_size=4,
            image_size=8,
            seed=1,
        )
    assert list(tmp_path.iterdir()) == []
