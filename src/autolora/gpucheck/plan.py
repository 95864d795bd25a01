"""The steps of the GPU check, in order of value, with their time budgets and sizes.

Each step names the function that runs it (``module:function`` under ``autolora.gpucheck``), the
most seconds it may take (``budget_s``), the fewest worth starting it with (``min_s``) and its
options on the GPU and in the CPU ``--dry-run`` (same code, tiny sizes). The sum of the budgets
exceeds the run's total budget on purpose: the total decides, and the steps at the end run only
when the earlier ones left time (docs/performance.md, "The GPU check").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autolora.errors import ConfigError
from autolora.planning.vocabulary import METHODS

DEFAULT_BUDGET_S = 460.0  # with the interpreter start-up: under 8 minutes on the device
FAST = ["channels_last", "bf16", "cudnn_benchmark"]  # compile is timed alone, last


@dataclass(frozen=True)
class Step:
    name: str
    run: str  # "module:function" in autolora.gpucheck
    what: str
    budget_s: float
    min_s: float
    gpu: Mapping[str, Any] = field(default_factory=dict)
    dry: Mapping[str, Any] = field(default_factory=dict)
    essential: bool = False  # the later steps are pointless when this one errors

    def options(self, dry_run: bool) -> dict[str, Any]:
        return dict(self.dry if dry_run else self.gpu)


def _args(text: str) -> list[str]:
    return text.split()


def _bench_args(archs: str) -> list[str]:
    return _args(
        f"--device cuda --size full --archs {archs} --check --config config/config.yaml "
        f"--fast {' '.join(FAST)} --warmup 1 --repeats 3 --autoattack-n 16"
    )


def _dry_bench_args(fast: str, methods: str) -> list[str]:
    # AutoAttack's cost on the CPU depends on whether a point survives APGD (seconds or a
    # minute): the dry run leaves it to cuda-attacks (and the bench's own CI test). bf16 is
    # emulated on the CPU, so only one of the two dry bench steps uses it.
    return _args(
        f"--device cpu --size tiny --archs tiny --check --config config/demo.yaml --fast {fast} "
        f"--methods {methods} --warmup 0 --repeats 1 --autoattack-n 0 --batch-size 4"
    )


def _step_case(arch: str, image_size: int, input_upsample: int | None, **sizes: int) -> dict:
    return {
        "arch": arch,
        "image_size": image_size,
        "input_upsample": input_upsample,
        "num_classes": 10,
        "methods": list(METHODS),
        **sizes,
    }


def _demo(signal_at: str, autoattack: bool, **overrides: Any) -> dict:
    return {
        "config": "config/demo.yaml",
        "dataset": "synth-a",
        "method": "autolora",
        "seed": 0,
        "signal_at": signal_at,  # epoch:batch after which SIGTERM arrives
        "autoattack": autoattack,
        **overrides,
    }


PLAN: tuple[Step, ...] = (
    Step(
        "environment",
        "environment:environment",
        "device, driver, torch/CUDA/cuDNN, TF32 flags, packages; a matmul checked and timed",
        budget_s=90,
        min_s=10,
        gpu={"peak_size": 8192},
        dry={"peak_size": 256},
        essential=True,
    ),
    Step(
        "cuda-step-224",
        "correctness:training_step_agreement",
        "one step of each method, ResNet-18 at 224 px: device vs CPU, same weights/batch/start",
        budget_s=90,
        min_s=20,
        gpu=_step_case("resnet18", 224, None, batch_size=8, attack_steps=10),
        dry=_step_case("tiny", 32, None, batch_size=4, attack_steps=3),
    ),
    Step(
        "cuda-step-32to224",
        "correctness:training_step_agreement",
        "the same on CIFAR's 32 -> 224 path (the model upsamples its input)",
        budget_s=90,
        min_s=20,
        gpu=_step_case("resnet18", 32, 224, batch_size=8, attack_steps=10),
        dry=_step_case("tiny", 16, 32, batch_size=4, attack_steps=3),
    ),
    Step(
        "cuda-attacks",
        "correctness:attacks_agreement",
        "PGD-10 on the device vs the CPU; standard AutoAttack on the device",
        budget_s=90,
        min_s=20,
        gpu=_step_case("resnet18", 32, 224, batch_size=16, autoattack_n=16),
        dry=_step_case("tiny", 16, 32, batch_size=8, autoattack_n=8),
    ),
    Step(
        "demo-cell",
        "correctness:demo_cell",
        "`autolora train` + `evaluate` of a demo cell on the device; SIGTERM, exit 75, resume; "
        "a run with the fast paths and gpu_augment",
        budget_s=150,
        min_s=30,
        gpu=_demo(
            "2:2",
            True,
            data={},
            pretrain={},
            fast_runtime={"gpu_augment": True, **{flag: True for flag in FAST}},
        ),
        dry=_demo(
            "2:1",
            False,
            data={"train": 64, "test": 16},
            pretrain={"epochs": 1, "train_size": 64, "test_size": 16, "attack_steps": 1},
            fast_runtime={
                "gpu_augment": True,
                "channels_last": True,
                "bf16": False,
                "cudnn_benchmark": True,
            },
        ),
    ),
    Step(
        "bench-resnet18",
        "speed:bench",
        "`autolora bench --check --config config/config.yaml` on ResNet-18 (224 px, 32 -> 224)",
        budget_s=170,
        min_s=45,
        gpu={"args": _bench_args("resnet18"), "unit_margin_s": 40},
        dry={
            "args": _dry_bench_args("channels_last", " ".join(METHODS)),
            "unit_margin_s": 5,
        },
    ),
    Step(
        "bench-resnet50",
        "speed:bench",
        "the same on ResNet-50",
        budget_s=220,
        min_s=60,
        gpu={"args": _bench_args("resnet50"), "unit_margin_s": 50},
        dry={"args": _dry_bench_args("channels_last bf16", "vanilla"), "unit_margin_s": 5},
    ),
    Step(
        "bench-projection",
        "speed:projection",
        "GPU-hours of the whole grid and the calibrated cost: block from both bench steps",
        budget_s=40,
        min_s=10,
        gpu={"config": "config/config.yaml", "from": ["bench-resnet18", "bench-resnet50"]},
        dry={"config": "config/demo.yaml", "from": ["bench-resnet18", "bench-resnet50"]},
    ),
    Step(
        "data-path",
        "speed:data_path",
        "gpu_augment batches/s vs the training step's consumption; does the GPU wait?",
        budget_s=90,
        min_s=25,
        gpu={
            "arch": "resnet18",
            "batch_size": 128,
            "batches": 8,
            "warmup": 1,
            "repeats": 3,
            "num_workers": None,  # None: training.runtime.num_workers of the config (8)
            "config": "config/config.yaml",
            "fast": ["channels_last", "bf16"],
            "datasets": [
                {"name": "resized-224", "augmentation": "resized_crop", "image_size": 224},
                {
                    "name": "cifar-32to224",
                    "augmentation": "pad_crop",
                    "image_size": 32,
                    "input_upsample": 224,
                },
            ],
        },
        dry={
            "arch": "tiny",
            "batch_size": 8,
            "batches": 3,
            "warmup": 0,
            "repeats": 1,
            "num_workers": 0,
            "config": "config/demo.yaml",
            "fast": ["channels_last"],
            "datasets": [
                {"name": "resized-32", "augmentation": "resized_crop", "image_size": 32},
                {
                    "name": "cifar-16to32",
                    "augmentation": "pad_crop",
                    "image_size": 16,
                    "input_upsample": 32,
                },
            ],
        },
    ),  # fmt: skip
    Step(
        "bench-compile",
        "speed:bench",
        "torch.compile added to the fast variant, ResNet-18, vanilla (if time is left)",
        budget_s=180,
        min_s=75,
        gpu={
            "args": _args(
                f"--device cuda --size full --archs resnet18 --methods vanilla --fast "
                f"{' '.join(FAST)} compile --warmup 2 --repeats 3 --autoattack-n 0"
            ),
            "unit_margin_s": 60,
        },
        # torch.compile takes minutes on a CPU: the dry run walks the step without it
        dry={
            "args": _args(
                "--device cpu --size tiny --methods vanilla --fast cudnn_benchmark --warmup 0 "
                "--repeats 1 --autoattack-n 0 --batch-size 4"
            ),
            "unit_margin_s": 5,
        },
    ),
    Step(
        "bench-equivalence",
        "speed:bench",
        "short training runs, plain vs the fast variant, 3 seeds (if time is left)",
        budget_s=120,
        min_s=45,
        gpu={
            "args": _args(
                f"--equivalence --device cuda --seeds 3 --epochs 3 --fast {' '.join(FAST)}"
            )
        },
        dry={
            "args": _args(
                "--equivalence --device cpu --methods vanilla --seeds 2 --epochs 1 "
                "--train-size 32 --test-size 16 --image-size 16 --attack-steps 1 "
                "--fast channels_last"
            )
        },
    ),
)

# Test hooks (`--inject-failure`): steps that fail on purpose, to show the runner records a
# failure and goes on. They import no torch.
INJECTED = {
    "error": Step("injected-error", "injected:error", "raises an exception", 30, 0),
    "crash": Step("injected-crash", "injected:crash", "kills its own process", 30, 0),
    "hang": Step("injected-hang", "injected:hang", "never returns", 30, 0),
}


def select(
    plan: Sequence[Step],
    *,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    inject: Sequence[str] = (),
) -> list[Step]:
    """The steps to run: ``only`` these (else all), minus ``skip``; injected steps go right after
    the first step, so that every real step after them shows the run went on."""
    names = [step.name for step in plan]
    for name in [*only, *skip]:
        if name not in names:
            raise ConfigError(f"unknown step {name!r}: choose from {', '.join(names)}")
    for kind in inject:
        if kind not in INJECTED:
            raise ConfigError(f"--inject-failure {kind!r}: choose from {', '.join(INJECTED)}")
    steps = [s for s in plan if (not only or s.name in only) and s.name not in skip]
    return steps[:1] + [INJECTED[kind] for kind in inject] + steps[1:]
