"""Pre-trained weights (SPEC §1): catalogue, lock file (trust on first use), download, and the
robustness-checkpoint conversion to safetensors."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from archives import serving
from safetensors.torch import load_file
from torch import nn
from torchvision.models import resnet18

from autolora import cli, weights
from autolora.errors import ChecksumError, ConfigError, DataError
from autolora.models import build_model, load_backbone_state
from autolora.planning import layout

REPO = Path(__file__).resolve().parents[1]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- catalogue and lock ---------------------------------------------------------------------------


def test_catalogue_covers_spec_checkpoints():
    assert len(weights.CATALOGUE) == 12
    entry = weights.lookup("resnet18", 4)
    assert entry.file == "resnet18_linf_eps4.0.ckpt"
    assert entry.url == (
        "https://huggingface.co/madrylab/robust-imagenet-models/resolve/main/resnet18_linf_eps4.0.ckpt"
    )
    assert entry.sha256 == "6f8ccef1ae4958c381617081e9e0fb5f50e7cccd4965192d1caa452fd6c5cd1e"
    assert weights.lookup("resnet50", 0).file == "resnet50_l2_eps0.ckpt"
    assert weights.lookup("resnet50", 0.5).file == "resnet50_linf_eps0.5.ckpt"
    assert weights.lookup("resnet18", 8).sha256 is None
    assert weights.lookup("resnet50", 1).sha256 is None
    with pytest.raises(ConfigError, match="eps_pt"):
        weights.lookup("resnet18", 3)
    with pytest.raises(ConfigError, match="tiny"):
        weights.lookup("tiny", 4)


def test_repository_lock_file_agrees_with_published_hashes():
    pinned = weights.read_lock(REPO / "config" / "weights.lock")
    published = {k: v for k, v in weights.PUBLISHED_SHA256.items() if v}
    assert pinned == published


def test_trust_on_first_use(tmp_path):
    lock = tmp_path / "weights.lock"
    lock.write_text("# a comment that must survive\n")
    entry = weights.lookup("resnet18", 8)  # no published hash
    ckpt = tmp_path / entry.file
    ckpt.write_bytes(b"first download")
    assert weights.verify_weights(ckpt, entry, lock) == sha256(b"first download")
    assert weights.read_lock(lock) == {entry.file: sha256(b"first download")}
    assert lock.read_text().startswith("# a comment that must survive\n")
    weights.verify_weights(ckpt, entry, lock)  # same file: still fine
    ckpt.write_bytes(b"another file")
    with pytest.raises(ChecksumError) as error:
        weights.verify_weights(ckpt, entry, lock)
    message = str(error.value)
    assert sha256(b"first download") in message and sha256(b"another file") in message
    assert str(lock) in message


def test_published_hash_is_enforced_and_must_agree_with_the_lock(tmp_path):
    entry = weights.lookup("resnet18", 4)
    ckpt = tmp_path / entry.file
    ckpt.write_bytes(b"not the real file")
    lock = tmp_path / "weights.lock"
    with pytest.raises(ChecksumError, match=entry.sha256):
        weights.verify_weights(ckpt, entry, lock)
    assert not lock.exists()  # published files are never recorded
    lock.write_text(f"{entry.file}: {'0' * 64}\n")
    with pytest.raises(ConfigError, match="0{64}"):
        weights.verify_weights(ckpt, entry, lock)


def test_download_resumes_records_and_refuses_a_different_file(tmp_path, monkeypatch):
    payload = os.urandom(50_000)
    entry = weights.lookup("resnet50", 1)
    lock = tmp_path / "weights.lock"
    with serving() as start:
        url, seen = start(payload)
        monkeypatch.setitem(
            weights.CATALOGUE, ("resnet50", 1.0), dataclasses.replace(entry, url=url + entry.file)
        )
        dest = tmp_path / "a" / entry.file
        dest.parent.mkdir()
        dest.with_name(entry.file + ".part").write_bytes(payload[:20_000])
        weights.download_weights("resnet50", 1, dest, lock_path=lock)
        assert dest.read_bytes() == payload and seen == ["bytes=20000-"]
        assert weights.read_lock(lock) == {entry.file: sha256(payload)}

        url2, _ = start(payload[:-1] + b"\0")
        monkeypatch.setitem(
            weights.CATALOGUE, ("resnet50", 1.0), dataclasses.replace(entry, url=url2 + entry.file)
        )
        other = tmp_path / "b" / entry.file
        with pytest.raises(ChecksumError, match=sha256(payload)):
            weights.download_weights("resnet50", 1, other, lock_path=lock)
        assert not other.exists() and not other.with_name(entry.file + ".part").exists()


# ---- conversion -----------------------------------------------------------------------------------


def robustness_checkpoint(state: dict[str, torch.Tensor], **extra) -> dict:
    """The robustness library's layout: DataParallel(AttackerModel).state_dict() under 'model'."""
    normaliser = {
        "new_mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
        "new_std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1),
    }
    model = {f"module.normalizer.{k}": v for k, v in normaliser.items()}
    model |= {f"module.model.{k}": v for k, v in state.items()}
    model |= {f"module.attacker.normalize.{k}": v for k, v in normaliser.items()}
    model |= {f"module.attacker.model.{k}": v for k, v in state.items()}
    return {
        "model": model,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9}]},
        "schedule": None,
        "epoch": 90,
        **extra,
    }


def randomised_resnet18() -> nn.Module:
    """A torchvision resnet18 with non-trivial BN statistics and a 10-way head."""
    torch.manual_seed(3)
    net = resnet18(weights=None)
    net.fc = nn.Linear(512, 10)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
            module.num_batches_tracked.fill_(1234)
    return net.eval()


def test_converted_checkpoint_reproduces_the_torchvision_model(tmp_path):
    net = randomised_resnet18()
    src = tmp_path / "resnet18_linf_eps4.0.ckpt"
    torch.save(robustness_checkpoint(net.state_dict()), src)
    out = tmp_path / "resnet18-eps4.safetensors"
    record = weights.convert_checkpoint(src, out, arch="resnet18", eps_pt_255=4)

    converted = load_file(str(out))
    assert set(converted) == set(net.state_dict())  # torchvision names, num_batches_tracked too
    assert int(converted["bn1.num_batches_tracked"]) == 1234
    model = build_model("resnet18", 10)
    load_backbone_state(model, converted)
    model.backbone.fc.load_state_dict(net.fc.state_dict())
    model.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(model(x), net((x - mean) / std))

    assert record["source"] == {
        "file": src.name,
        "sha256": sha256(src.read_bytes()),
        "catalogue_file": "resnet18_linf_eps4.0.ckpt",
    }
    assert record["sha256"] == sha256(out.read_bytes())
    assert (record["arch"], record["eps_pt"]) == ("resnet18", 4)
    assert layout.backbone_record(out).is_file()


def tiny_state() -> dict[str, torch.Tensor]:
    return build_model("tiny", 10).backbone.state_dict()


class Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_dill_style_extras_load_through_the_restricted_unpickler(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "ckpt.pt"
    state = tiny_state()
    torch.save(robustness_checkpoint(state, epoch=np.int64(90), schedule=Exploit(marker)), src)
    with pytest.raises(Exception):  # noqa: B017 (the safe loader must refuse it)
        torch.load(src, weights_only=True)
    weights.convert_checkpoint(src, tmp_path / "out.safetensors", arch="tiny", eps_pt_255=4)
    assert not marker.exists()
    converted = load_file(str(tmp_path / "out.safetensors"))
    assert all(torch.equal(converted[k], v) for k, v in state.items())


def test_foreign_object_inside_the_model_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = robustness_checkpoint(tiny_state())
    checkpoint["model"]["module.model.conv1.weight"] = Exploit(marker)
    src = tmp_path / "ckpt.pt"
    torch.save(checkpoint, src)
    with pytest.raises(DataError, match="conv1.weight is not a tensor"):
        weights.convert_checkpoint(src, tmp_path / "out.safetensors", arch="tiny", eps_pt_255=4)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_not_a_robustness_checkpoint(tmp_path):
    src = tmp_path / "plain.pt"
    torch.save(tiny_state(), src)
    with pytest.raises(DataError, match="robustness"):
        weights.convert_checkpoint(src, tmp_path / "out.safetensors", arch="tiny", eps_pt_255=4)


def test_corrupted_checkpoint_gives_a_checksum_error_and_no_output(tmp_path):
    src = tmp_path / "ckpt.pt"
    torch.save(robustness_checkpoint(tiny_state()), src)
    good = sha256(src.read_bytes())
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x01
    src.write_bytes(bytes(data))
    out = tmp_path / "out.safetensors"
    with pytest.raises(ChecksumError) as error:
        weights.convert_checkpoint(src, out, arch="tiny", eps_pt_255=4, expected_sha256=good)
    assert good in str(error.value) and sha256(bytes(data)) in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_cli_convert_and_verify(tmp_path, capsys):
    src = tmp_path / "ckpt.pt"
    torch.save(robustness_checkpoint(tiny_state()), src)
    out = tmp_path / "tiny.safetensors"
    lock = str(tmp_path / "weights.lock")
    base = ["weights", "convert", "--src", str(src), "--out", str(out), "--lock", lock]
    # resnet18 eps 4 has a published hash, which this file does not match
    assert cli.main([*base, "--arch", "resnet18", "--eps", "4"]) == 2
    assert "6f8ccef1ae" in capsys.readouterr().err and not out.exists()
    assert cli.main([*base, "--arch", "tiny", "--eps", "4"]) == 0
    assert out.is_file()
    verify = ["weights", "verify", "--arch", "resnet18", "--eps", "8", "--lock", lock]
    assert cli.main([*verify, "--file", str(src)]) == 0  # first use: recorded
    assert weights.read_lock(lock) == {"resnet18_linf_eps8.0.ckpt": sha256(src.read_bytes())}
    assert cli.main([*verify, "--file", str(out)]) == 2


def test_cli_convert_infers_arch_from_the_file_name_and_checks_it(tmp_path, capsys):
    src = tmp_path / "resnet18_linf_eps8.0.ckpt"  # no published hash; an empty lock
    torch.save(robustness_checkpoint(tiny_state()), src)
    out = tmp_path / "out.safetensors"
    lock = str(tmp_path / "weights.lock")
    assert (
        cli.main(["weights", "convert", "--src", str(src), "--out", str(out), "--lock", lock]) == 2
    )
    assert "do not match a torchvision resnet18" in capsys.readouterr().err
    assert not out.exists()
    other = tmp_path / "mine.ckpt"
    src.rename(other)
    assert cli.main(["weights", "convert", "--src", str(other), "--out", str(out)]) == 2
    assert "pass --arch and --eps" in capsys.readouterr().err


def test_converting_the_same_checkpoint_twice_gives_identical_bytes(tmp_path):
    src = tmp_path / "ckpt.pt"
    torch.save(robustness_checkpoint(tiny_state(), epoch=np.int64(90)), src)
    first = weights.convert_checkpoint(src, tmp_path / "a.safetensors", arch="tiny", eps_pt_255=4)
    second = weights.convert_checkpoint(src, tmp_path / "b.safetensors", arch="tiny", eps_pt_255=4)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert first["sha256"] == second["sha256"]
    # and in a fresh process (safetensors' metadata order was random per process and per file)
    out = tmp_path / "c.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = ["weights", "convert", "--src", str(src), "--out", str(out), "--arch", "tiny"]
    subprocess.run(
        [sys.executable, "-m", "autolora.cli", *command, "--eps", "4"], env=env, check=True
    )
    assert out.read_bytes() == (tmp_path / "a.safetensors").read_bytes()


def test_first_conversion_of_an_unpinned_checkpoint_pins_it(tmp_path):
    lock = tmp_path / "weights.lock"  # no line for resnet18_linf_eps8.0.ckpt: nothing published
    src = tmp_path / "resnet18-eps8.ckpt"
    torch.save(robustness_checkpoint(randomised_resnet18().state_dict()), src)
    out = tmp_path / "resnet18-eps8.safetensors"
    record = weights.convert_checkpoint(src, out, arch="resnet18", eps_pt_255=8, lock_path=lock)
    assert weights.read_lock(lock) == {"resnet18_linf_eps8.0.ckpt": sha256(src.read_bytes())}
    assert record["source"]["checked_against"] == f"{lock} (recorded now)"
    # what `autolora train` checks before using it: the record, and the source against the lock
    checked = weights.verify_backbone(
        out.read_bytes(), out, arch="resnet18", eps_pt_255=8, lock_path=lock
    )
    assert checked[-1] == {
        "path": "resnet18_linf_eps8.0.ckpt",
        "sha256": sha256(src.read_bytes()),
        "checked_against": str(lock),
        "source": True,
    }
    with pytest.raises(ChecksumError, match="neither published nor pinned"):
        weights.verify_backbone(
            out.read_bytes(), out, arch="resnet18", eps_pt_255=8, lock_path=tmp_path / "other.lock"
        )
    # a different file converted later under the same name is refused, naming both hashes
    net = randomised_resnet18()
    with torch.no_grad():
        net.conv1.weight.add_(1)
    other = tmp_path / "other.ckpt"
    torch.save(robustness_checkpoint(net.state_dict()), other)
    later = tmp_path / "later.safetensors"
    with pytest.raises(ChecksumError) as error:
        weights.convert_checkpoint(other, later, arch="resnet18", eps_pt_255=8, lock_path=lock)
    assert sha256(src.read_bytes()) in str(error.value)
    assert sha256(other.read_bytes()) in str(error.value)
    assert not later.exists() and not layout.backbone_record(later).exists()


def test_a_truncated_backbone_is_one_clear_error(tmp_path):
    out = tmp_path / "tiny.safetensors"
    weights.write_backbone(tiny_state(), out, arch="tiny", eps_pt_255=4, source={"test": True})
    out.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(ChecksumError, match="differs from .* recorded in .*tiny.json"):
        weights.load_verified_backbone(out, arch="tiny", eps_pt_255=4)
    layout.backbone_record(out).unlink()
    with pytest.raises(DataError, match="has no record .*tiny.json beside it"):
        weights.load_verified_backbone(out, arch="tiny", eps_pt_255=4)


def test_a_lock_file_is_never_started_away_from_the_committed_one(tmp_path, monkeypatch):
    """Run from another folder, the default `config/weights.lock` does not exist there: pinning
    is refused with the option to pass, and no folder or file is created."""
    from autolora.pins import check_or_pin

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="pass --lock <repository>/config/weights.lock"):
        check_or_pin("a" * 64, "dogs/images.tar", "config/weights.lock", "images.tar", "redo")
    assert list(tmp_path.iterdir()) == []


def _pin_after(barrier, lock: str, index: int) -> None:
    from autolora.pins import check_or_pin

    barrier.wait()  # every process reads the lock file at the same moment
    check_or_pin(f"{index:064x}", f"file-{index}", lock, f"file-{index}", "redo")


def test_concurrent_pins_each_keep_their_line(tmp_path):
    """Jobs pinning different files at once (a Dogs download beside a checkpoint conversion) must
    not overwrite each other's line: the read, the check and the append hold the folder's lock."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    lock = tmp_path / "weights.lock"
    count = 12
    barrier = context.Barrier(count)
    workers = [
        context.Process(target=_pin_after, args=(barrier, str(lock), i)) for i in range(count)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0] * count
    assert weights.read_lock(lock) == {f"file-{i}": f"{i:064x}" for i in range(count)}
