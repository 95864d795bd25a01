"""Equivalence evidence for the fast paths (docs/performance.md): one training step of each
method under channels_last / bf16 against plain fp32 eager on the same batch and weights, a
short training run, and the device-side augmentation against the CPU transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autolora.cli import main
from autolora.data.gpu_augment import (
    CropParams,
    DeviceAugmenter,
    PackedImages,
    device_batches,
    make_device_loader,
    resized_shape,
)
from autolora.data.loaders import make_loader
from autolora.data.prepared import PreparedDataset, SplitPlan, write_prepared_dataset
from autolora.data.transforms import TransformSpec, resize_shorter
from autolora.errors import ConfigError
from autolora.fastpath import (
    BF16_DEVIATION_FACTOR,
    BF16_DEVIATION_FLOOR,
    BF16_LOSS_RTOL,
    FP32_GRAD_COSINE,
    FP32_LOSS_RTOL,
    FastPaths,
    agreement,
    step_loss_and_gradients,
    within_tolerance,
)
from autolora.methods import MethodSettings, build_method
from autolora.models import build_model
from autolora.planning.cells import resolve_cell

METHODS = ("vanilla", "twins", "autolora")
BATCH = 8


# ---- flags -------------------------------------------------------------------------------------


def test_fast_paths_from_runtime_mapping_and_cell_config():
    assert FastPaths.from_runtime({"bf16": True, "device": "cpu"}) == FastPaths(bf16=True)
    cell = resolve_cell(
        {
            "protocol": "paper",
            "arch": "tiny",
            "eps_pt": 4,
            "dataset": "cifar10",
            "method": "vanilla",
            "seed": 0,
            "overrides": {"runtime.channels_last": True},
        }
    )
    assert FastPaths.from_runtime(cell.runtime) == FastPaths(channels_last=True)
    assert FastPaths().label() == "plain fp32 eager"
    assert FastPaths.all_on().label() == "channels_last+bf16+compile+cudnn_benchmark"
    with pytest.raises(ConfigError, match="runtime.bf16"):
        FastPaths.from_runtime({"bf16": "yes"})


# ---- one step: loss and gradients --------------------------------------------------------------


def _step_setup(method_name: str, attack_steps: int = 10):
    method = build_method(
        method_name,
        MethodSettings(eps=8 / 255, step=2 / 255, attack_steps=attack_steps, kl_divisor=BATCH),
    )
    if method.uses_lambda_pass:
        method.set_lambdas(0.5, 3.0)
    torch.manual_seed(1)
    model = build_model("tiny", 10, **method.model_options())
    with torch.no_grad():  # B = 0 at init would give the LoRa matrices no gradient to compare
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                parameter.normal_(0.0, 0.01)
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(BATCH, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (BATCH,), generator=generator)
    return method, model, x, y


@pytest.mark.parametrize("method_name", METHODS)
def test_channels_last_step_matches_plain_fp32(method_name):
    method, model, x, y = _step_setup(method_name)
    plain = step_loss_and_gradients(method, model, x, y, FastPaths(), seed=3)
    fast = step_loss_and_gradients(method, model, x, y, FastPaths(channels_last=True), seed=3)
    measured = agreement(plain, fast)
    assert set(plain[1]) == set(fast[1]) and plain[1]  # the same parameters got gradients
    assert measured["loss_rel_error"] <= FP32_LOSS_RTOL
    assert measured["grad_cosine"] >= FP32_GRAD_COSINE
    assert measured["worst_tensor_cosine"] >= FP32_GRAD_COSINE
    assert measured["grad_rel_error"] <= 1e-3


@pytest.mark.parametrize("method_name", METHODS)
def test_bf16_step_within_random_start_noise(method_name):
    """bf16 perturbs the gradient about as much as the attack's own randomness does: the
    deviation from plain fp32 is at most BF16_DEVIATION_FACTOR x that of another random start
    (or cosine >= 0.95)."""
    method, model, x, y = _step_setup(method_name)
    plain = step_loss_and_gradients(method, model, x, y, FastPaths(), seed=3)
    other_start = step_loss_and_gradients(method, model, x, y, FastPaths(), seed=4)
    bf16 = step_loss_and_gradients(method, model, x, y, FastPaths(bf16=True), seed=3)
    measured = agreement(plain, bf16)
    start_deviation = 1.0 - agreement(plain, other_start)["grad_cosine"]
    assert measured["loss_rel_error"] <= BF16_LOSS_RTOL
    allowed = max(BF16_DEVIATION_FLOOR, BF16_DEVIATION_FACTOR * start_deviation)
    assert 1.0 - measured["grad_cosine"] <= allowed
    assert within_tolerance(measured, FastPaths(bf16=True), start_deviation)
    assert measured["grad_cosine"] > 0.9
    assert measured["loss_rel_error"] > 0  # bf16 really ran (autocast on the CPU)


def test_step_gradients_leave_the_model_untouched():
    method, model, x, y = _step_setup("vanilla", attack_steps=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step_loss_and_gradients(method, model, x, y, FastPaths(channels_last=True), seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ---- a short training run ----------------------------------------------------------------------


def test_short_run_equivalence_through_the_bench(capsys, tmp_path):
    """`autolora bench --equivalence` at its smallest: 2 seeds, plain vs channels_last+bf16."""
    out = tmp_path / "equivalence.json"
    code = main(
        ["bench", "--device", "cpu", "--equivalence", "--methods", "vanilla", "--seeds", "2",
         "--epochs", "2", "--train-size", "128", "--test-size", "128", "--attack-steps", "3",
         "--image-size", "16", "--fast", "channels_last", "bf16", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "vanilla   clean" in printed and "PGD-10" in printed
    import json

    record = json.loads(out.read_text())
    runs = record["runs"]
    assert len(runs) == 4
    (entry,) = record["summary"]
    for metric in ("clean_accuracy", "pgd_accuracy"):
        plain = [r[metric] for r in runs if r["fast_path"] == "plain fp32 eager"]
        fast = [r[metric] for r in runs if r["fast_path"] == "channels_last+bf16"]
        assert entry[metric]["plain"][0] == pytest.approx(np.mean(plain))
        assert entry[metric]["paired_difference"] == pytest.approx(np.mean(fast) - np.mean(plain))
        assert entry[metric]["within_seed_noise"]
    assert max(r["clean_accuracy"] for r in runs) > 40  # learnt something (4 classes: 25%)


# ---- device-side augmentation ------------------------------------------------------------------


def _prepared(tmp_path, augmentation: str, shapes: list[tuple[int, int]], **sizes):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    n = len(images)
    plan = SplitPlan(train=list(range(n)), val=[0], test=[0], num_outputs=2)
    directory = write_prepared_dataset(
        tmp_path / augmentation,
        name="aug",
        images=images,
        labels=[i % 2 for i in range(n)],
        sources=[f"image{i}" for i in range(n)],
        class_names=["a", "b"],
        augmentation=augmentation,
        input_upsample=None,
        archives=[],
        splits={"paper": plan},
        **sizes,
    )
    return PreparedDataset.open(directory).split("paper", "train")


def _cpu_and_device_batches(view, batch_size: int, epoch: int = 0, shuffle: bool = True):
    options = {"seed": 5, "epoch": epoch, "batch_size": batch_size, "shuffle": shuffle}
    cpu = list(make_loader(view, train=True, **options))
    loader = make_device_loader(view, **options)
    augmenter = DeviceAugmenter(TransformSpec.from_metadata(view.metadata))
    device = list(device_batches(loader, augmenter, torch.device("cpu")))
    return cpu, device


def test_pad_crop_on_device_is_bit_identical_to_the_cpu_transform(tmp_path):
    view = _prepared(tmp_path, "pad_crop", [(32, 32)] * 24, image_size=32, pad=4)
    for epoch in (0, 1):
        cpu, device = _cpu_and_device_batches(view, batch_size=10, epoch=epoch)
        assert [x.shape[0] for x, _ in device] == [10, 10, 4]
        for (x_cpu, y_cpu), (x_dev, y_dev) in zip(cpu, device, strict=True):
            assert x_dev.dtype == torch.float32
            assert torch.equal(x_cpu, x_dev)
            assert torch.equal(torch.as_tensor(y_cpu), y_dev)
    # the augmentation did something: crops moved and some images were flipped
    stored = torch.stack([view[i][0] for i in range(len(view))]).float() / 255
    assert not torch.equal(torch.cat([x for x, _ in cpu]).sort(0)[0], stored.sort(0)[0])


def test_pad_crop_gather_by_hand():
    """One image, box and flip checked against slicing written out by hand."""
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8)
    images = image.reshape(2, 3, 4, 4)
    spec = TransformSpec("pad_crop", 4, pad=1)
    params = CropParams(torch.tensor([[0, 2, 4, 4], [1, 1, 4, 4]]), torch.tensor([True, False]))
    out = DeviceAugmenter(spec).apply(images, params)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    expected0 = padded[0, :, 0:4, 2:6].flip(-1)
    expected1 = padded[1, :, 1:5, 1:5]
    assert torch.equal(out[0], expected0.float() / 255)
    assert torch.equal(out[1], expected1.float() / 255)


def test_resized_crop_on_device_within_one_level(tmp_path):
    """Stored at the eval resize (a no-op Resize) and, for the last two, not (resized first).
    The device resizes in float and rounds; torch's uint8 kernel is fixed-point: <= 1/255."""
    shapes = [(40, 52), (61, 40), (40, 40), (40, 47), (30, 45), (70, 90)]
    view = _prepared(tmp_path, "resized_crop", shapes, image_size=32, resize=40)
    cpu, device = _cpu_and_device_batches(view, batch_size=4, shuffle=False)
    x_cpu = torch.cat([x for x, _ in cpu])
    x_dev = torch.cat([x for x, _ in device])
    assert x_dev.shape == x_cpu.shape == (6, 3, 32, 32)
    levels = (x_cpu - x_dev).abs().mul(255).round()
    assert levels[:4].max() <= 1  # stored at Resize(40): one float resize vs one uint8 resize
    assert levels[4:].max() <= 2  # two resizes, each may round differently
    assert levels.gt(0).float().mean() < 0.5


def test_resized_shape_matches_torchvision_resize():
    for h, w in [(40, 52), (61, 40), (40, 40), (333, 500), (500, 333)]:
        image = torch.zeros(3, h, w, dtype=torch.uint8)
        assert resized_shape(h, w, 32) == tuple(resize_shorter(image, 32).shape[-2:])


def test_packed_images_round_trip():
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(4, 5), (6, 3)]]
    packed = PackedImages.pack(images)
    assert packed.data.dtype == torch.uint8 and packed.data.numel() == 3 * (20 + 18)
    unpacked = packed.to("cpu").unpack()
    assert all(torch.equal(a, b) for a, b in zip(images, unpacked, strict=True))
    same = PackedImages.pack([images[0], images[0]]).unpack()
    assert isinstance(same, torch.Tensor) and same.shape == (2, 3, 4, 5)
