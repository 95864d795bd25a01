"""Adversarial pre-training of the tiny backbone on a synthetic source task.

The demo's stand-in for Salman et al.'s ImageNet weights: PGD adversarial training (Madry et al.,
the recipe of those checkpoints) at ε_pt/255 on synthetic images drawn with a source seed of their
own, so the downstream synthetic datasets are a different task. The output has the converted
format of ``autolora.weights`` (safetensors, torchvision keys incl. ``fc``) and a JSON record with
clean and PGD-10 robust accuracy on held-out source images.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from autolora.errors import ConfigError

SOURCE_SEED = 7919  # the demo's downstream datasets use other seeds
EVALUATION_BATCH_SIZE = 256  # images per batch of the test-set accuracy


@dataclass(frozen=True)
class PretrainSettings:
    arch: str = "tiny"
    eps_255: float = 4.0
    epochs: int = 8
    num_classes: int = 10
    train_size: int = 2000
    test_size: int = 500
    image_size: int = 32
    seed: int = SOURCE_SEED
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    attack_steps: int = 5
    eval_steps: int = 10

    def check(self) -> None:
        if self.arch != "tiny":
            raise ConfigError(
                f"arch {self.arch!r}: only the tiny backbone is pre-trained here; get resnet18 / "
                "resnet50 weights with `autolora weights download`"
            )
        if self.eps_255 < 0:
            raise ConfigError(f"eps {self.eps_255}: must be >= 0 (in /255; 0 = standard training)")
        for name in ("epochs", "num_classes", "train_size", "test_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")

    @property
    def eps(self) -> float:
        return self.eps_255 / 255

    @property
    def step(self) -> float:
        """PGD step 2.5·ε/steps (Madry et al.), so the walk can cross the ball."""
        return 2.5 * self.eps / max(self.attack_steps, 1)


def source_arrays(settings: PretrainSettings, part: str):
    """Source-task images as float tensors in [0, 1] (N, 3, S, S) and labels."""
    import torch

    from autolora.data.synthetic import generate_synthetic_arrays

    count = settings.train_size if part == "train" else settings.test_size
    images, labels = generate_synthetic_arrays(
        num_classes=settings.num_classes,
        count=count,
        image_size=settings.image_size,
        seed=settings.seed,
        part=part,
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return x, torch.from_numpy(labels)


def test_accuracy_percent(model, x, y, *, settings: PretrainSettings) -> tuple[float, float]:
    """(clean, PGD) accuracy in percent of the model on ``x``, ``y`` (``autolora.accuracy``: eval
    mode, PGD without random start, ``eval_steps`` steps); without an attack radius the PGD
    accuracy is the clean one."""
    from autolora.accuracy import clean_accuracy, clean_and_pgd_accuracy, tensor_batches

    batches = tensor_batches(x, y, EVALUATION_BATCH_SIZE)
    if settings.eps > 0:
        clean, robust, _ = clean_and_pgd_accuracy(
            model, batches, eps=settings.eps, step=settings.eps / 4, steps=settings.eval_steps
        )
        return clean, robust
    clean, _ = clean_accuracy(model, batches)
    return clean, clean


class MadryTraining:
    """The source task's adversarial training (Madry et al.): cross-entropy on PGD examples with a
    random start (clean examples when ε is 0), taken as a method's step by
    ``autolora.train.step.TrainingStep``."""

    def __init__(self, settings: PretrainSettings) -> None:
        self.settings = settings

    def training_step(self, model, x, y, *, generator):
        import torch.nn.functional as F

        from autolora.methods.base import StepResult, training_attack

        if self.settings.eps > 0:
            x = training_attack(model, x, y, self.settings, generator)
        model.train()
        return StepResult(F.cross_entropy(model(x), y))


def pretrain(settings: PretrainSettings) -> tuple[Any, dict[str, Any]]:
    """Train; return the backbone (torchvision-named module) and the metrics."""
    import torch

    from autolora.fastpath import FastPaths
    from autolora.models import build_model
    from autolora.train.step import TrainingStep

    settings.check()
    torch.manual_seed(settings.seed)
    model = build_model(settings.arch, settings.num_classes)
    x_train, y_train = source_arrays(settings, "train")
    x_test, y_test = source_arrays(settings, "test")
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    steps_per_epoch = -(-len(x_train) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch
    )
    step = TrainingStep(
        MadryTraining(settings), model, optimizer, paths=FastPaths(), device=torch.device("cpu")
    )
    shuffle = torch.Generator().manual_seed(settings.seed)
    attack_noise = torch.Generator().manual_seed(settings.seed + 1)
    for _ in range(settings.epochs):
        order = torch.randperm(len(x_train), generator=shuffle)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            x, y = x_train[batch], y_train[batch]
            flip = torch.rand(len(x), generator=shuffle) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            step(x, y, generator=attack_noise)
            schedule.step()
    clean, robust = test_accuracy_percent(model, x_test, y_test, settings=settings)
    metrics = {
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "chance_accuracy": 100.0 / settings.num_classes,
        "n": len(x_test),
    }
    return model.backbone, metrics


def pretrain_to_file(settings: PretrainSettings, out: str | os.PathLike) -> dict[str, Any]:
    """Pre-train and write ``out`` (safetensors, torchvision keys) and its JSON record beside it."""
    from autolora.data.synthetic import GENERATOR_NAME, GENERATOR_VERSION
    from autolora.weights import write_backbone

    started = time.monotonic()
    backbone, metrics = pretrain(settings)
    return write_backbone(
        backbone.state_dict(),
        out,
        arch=settings.arch,
        eps_pt_255=settings.eps_255,
        source={
            "pretrained_by": "autolora pretrain",
            "generator": GENERATOR_NAME,
            "version": GENERATOR_VERSION,
            "seed": settings.seed,
            "num_classes": settings.num_classes,
            "train": settings.train_size,
            "test": settings.test_size,
            "image_size": settings.image_size,
        },
        settings=asdict(settings),
        attack={
            "train": {"eps": settings.eps, "step": settings.step, "steps": settings.attack_steps},
            "eval": {"eps": settings.eps, "step": settings.eps / 4, "steps": settings.eval_steps},
        },
        metrics=metrics,
        seconds=round(time.monotonic() - started, 2),
    )
