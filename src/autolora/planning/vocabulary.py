"""The paper's nouns, defined once: the methods, the backbones and their pre-training ε, the
downstream datasets, the default LoRa rank and α, the ablation variants and the baselines' Table 7
hyper-parameters (SPEC §1, §2, §4, §6).

Every other place that names one of these takes it from here: cell resolution and the grid, the
workflow's wildcard constraints (``workflow/rules/common.smk``), the commands' argument choices,
the cost model's dataset sizes, the tables' labels, the dataset catalogue
(``autolora.data.sources``: archives and checksums, keyed by these names), the backbone catalogue
(``autolora.weights``) and the method registry (``autolora.methods.METHODS``, the classes; a test
checks that both agree). Torch-free: Snakemake imports it while it builds the DAG.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autolora.errors import ConfigError

# ---- methods (SPEC §4) --------------------------------------------------------------------------

VANILLA = "vanilla"  # TRADES-style robust fine-tuning
TWINS = "twins"  # dual batch-norm
AUTOLORA = "autolora"  # the paper's method
METHODS = (VANILLA, TWINS, AUTOLORA)
BASELINES = (VANILLA, TWINS)
PROPOSED = AUTOLORA
METHOD_LABELS = {VANILLA: "Vanilla RFT", TWINS: "TWINS", AUTOLORA: "AutoLoRa"}
GRAD_SIMILARITY_METHODS = BASELINES  # SPEC 4.5 defines the gradient similarity for these only

# Per-dataset hyper-parameters of each method (SPEC §6): Table 7 for the baselines; AutoLoRa has
# no per-dataset tuning. A dataset outside Table 7 gives them in the config (`hyper`).
HYPER_KEYS: dict[str, tuple[str, ...]] = {
    VANILLA: ("lr", "weight_decay"),
    TWINS: ("lr", "weight_decay", "twins_gamma"),
    AUTOLORA: ("lr", "weight_decay"),
}
AUTOLORA_HYPER = {"lr": 0.01, "weight_decay": 1e-4}
TABLE7: dict[str, dict[str, dict[str, float]]] = {
    VANILLA: {
        "cifar10": {"lr": 1e-2, "weight_decay": 1e-4},
        "cifar100": {"lr": 1e-3, "weight_decay": 1e-4},
        "dtd": {"lr": 1e-2, "weight_decay": 1e-4},
        "dogs": {"lr": 1e-3, "weight_decay": 1e-4},
        "cub": {"lr": 1e-2, "weight_decay": 1e-4},
        "caltech256": {"lr": 1e-2, "weight_decay": 1e-4},
    },
    TWINS: {
        "cifar10": {"lr": 1e-2, "weight_decay": 1e-4, "twins_gamma": 1.0},
        "cifar100": {"lr": 1e-2, "weight_decay": 1e-4, "twins_gamma": 1.0},
        "dtd": {"lr": 1e-3, "weight_decay": 1e-4, "twins_gamma": 1.0},
        "dogs": {"lr": 3e-3, "weight_decay": 1e-4, "twins_gamma": 1.0},
        "cub": {"lr": 1e-2, "weight_decay": 1e-4, "twins_gamma": 3.0},
        "caltech256": {"lr": 3e-3, "weight_decay": 1e-4, "twins_gamma": 1.0},
    },
}

# ---- backbones (SPEC §1) ------------------------------------------------------------------------

# The robust ImageNet ResNets of Salman et al. (2020), downloaded (autolora.weights).
PUBLISHED_ARCHS = ("resnet18", "resnet50")
# The demo's small ResNet, adversarially pre-trained here on a synthetic task (autolora pretrain).
PRETRAINED_HERE_ARCHS = ("tiny",)
ARCHS = (*PUBLISHED_ARCHS, *PRETRAINED_HERE_ARCHS)
ARCH_LABELS = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "tiny": "tiny"}
# Pre-training ε (L-inf, /255) of the published backbones (ε = 0: standard training); the tiny
# backbone is pre-trained at any ε.
PUBLISHED_EPS_PT_255 = (0, 0.5, 1, 2, 4, 8)

# ---- datasets (SPEC §2) -------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetFacts:
    """A downstream dataset as the paper describes it. ``family``: the module of
    ``autolora.data.sources`` that prepares it (its archives are listed in that catalogue)."""

    key: str
    label: str  # the paper's name
    num_classes: int
    paper_counts: Mapping[str, int]  # train / val / test sizes under the paper's protocol
    family: str


def _counts(train: int, val: int, test: int) -> dict[str, int]:
    return {"train": train, "val": val, "test": test}


DATASETS: dict[str, DatasetFacts] = {
    facts.key: facts
    for facts in (
        DatasetFacts("cifar10", "CIFAR-10", 10, _counts(47_500, 2_500, 10_000), "cifar"),
        DatasetFacts("cifar100", "CIFAR-100", 100, _counts(47_500, 2_500, 10_000), "cifar"),
        # the released code validates on the test set of DTD and Caltech-256
        DatasetFacts("dtd", "DTD-57", 47, _counts(3_760, 1_880, 1_880), "dtd"),
        DatasetFacts("dogs", "DOG-120", 120, _counts(11_400, 600, 8_580), "dogs"),
        DatasetFacts("cub", "CUB-200", 200, _counts(5_694, 300, 5_794), "cub"),
        DatasetFacts("caltech256", "Caltech-256", 257, _counts(38_550, 3_549, 3_549), "caltech"),
    )
}
DATASET_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # a config's dataset key (a folder name)
SYNTHETIC = "synthetic"  # the config's `source` of a generated dataset (autolora data synthesize)
DATASET_SOURCES = (*DATASETS, SYNTHETIC)  # what a config's `datasets.<name>.source` may be


def dataset_label(key: str) -> str:
    """The paper's name of a dataset (a synthetic one keeps its key)."""
    return DATASETS[key].label if key in DATASETS else key


# ---- defaults and ablation variants (SPEC §6, Tables 3, 5, 6) -----------------------------------

DEFAULT_LORA_RANK = 8  # r = 8: a Table 3 cell with r = 8 is the main AutoLoRa cell
DEFAULT_ALPHA = 1.0  # α = 1: a Table 6 cell with α = 1 is the main AutoLoRa cell
RANK_PREFIX = "r"  # r<k>: AutoLoRa with LoRa rank k (Table 3)
ALPHA_PREFIX = "alpha"  # alpha<a>: AutoLoRa with exponent a of the λ schedule (Table 6)
AUTOLR = "autolr"  # a baseline with the automated LR scheduler (Table 5)
# Which cell setting each variant sets, and the methods it applies to.
VARIANT_METHODS: dict[str, tuple[str, ...]] = {
    "lora_rank": (AUTOLORA,),
    "alpha": (AUTOLORA,),
    "lr_schedule": BASELINES,
}
NUMBER_PATTERN = r"\d+(?:\.\d+)?"  # a number as ids write it (format_number): 4, 0.5
VARIANT_PATTERN = rf"{RANK_PREFIX}\d+|{ALPHA_PREFIX}{NUMBER_PATTERN}|{AUTOLR}"
VARIANTS_ALLOWED = (
    f"null, {RANK_PREFIX}<k> ({AUTOLORA}), {ALPHA_PREFIX}<a> ({AUTOLORA}), "
    f"{AUTOLR} ({', '.join(BASELINES)})"
)


def format_number(value: float) -> str:
    """Shortest text of a number as ids and variants write it: 4 -> "4", 0.5 -> "0.5"."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def plain_number(value: Any) -> int | float:
    """A number as identities hold it: an int when it is whole (4.0 -> 4), a float otherwise."""
    number = float(value)
    return int(number) if number.is_integer() else number


def rank_variant(rank: int) -> str | None:
    """The variant of AutoLoRa at LoRa rank ``rank`` (None: the default rank, the main cell)."""
    return None if int(rank) == DEFAULT_LORA_RANK else f"{RANK_PREFIX}{int(rank)}"


def alpha_variant(alpha: float) -> str | None:
    """The variant of AutoLoRa at exponent ``alpha`` (None: the default α, the main cell)."""
    return None if float(alpha) == DEFAULT_ALPHA else f"{ALPHA_PREFIX}{format_number(alpha)}"


def parse_variant(variant: str | None, method: str) -> tuple[str, Any] | None:
    """The cell setting a variant sets: ``"r4"`` -> ("lora_rank", 4); ``"alpha0.5"`` -> ("alpha",
    0.5); ``"autolr"`` -> ("lr_schedule", "autolr"); None -> None. A ConfigError for a variant that
    is malformed or does not apply to ``method``."""
    if variant is None:
        return None
    if not isinstance(variant, str):
        raise ConfigError(f"invalid value {variant!r} for 'variant'; allowed: {VARIANTS_ALLOWED}")
    rank = re.fullmatch(rf"{RANK_PREFIX}(\d+)", variant)
    alpha = re.fullmatch(rf"{ALPHA_PREFIX}({NUMBER_PATTERN})", variant)
    if rank and int(rank.group(1)) >= 1 and method in VARIANT_METHODS["lora_rank"]:
        return ("lora_rank", int(rank.group(1)))
    if alpha and float(alpha.group(1)) > 0 and method in VARIANT_METHODS["alpha"]:
        return ("alpha", plain_number(alpha.group(1)))
    if variant == AUTOLR and method in VARIANT_METHODS["lr_schedule"]:
        return ("lr_schedule", AUTOLR)
    raise ConfigError(
        f"invalid variant {variant!r} for method {method!r}; allowed: {VARIANTS_ALLOWED}"
    )


def canonical_variant(variant: str | None, method: str) -> str | None:
    """The variant's canonical name (``alpha0.50`` -> ``alpha0.5``), checked for ``method``."""
    parsed = parse_variant(variant, method)
    if parsed is None:
        return None
    setting, value = parsed
    if setting == "lora_rank":
        return f"{RANK_PREFIX}{value}"
    if setting == "alpha":
        return f"{ALPHA_PREFIX}{format_number(value)}"
    return AUTOLR


def method_folder(method: str, variant: str | None) -> str:
    """The method part of a cell id: ``autolora``, ``autolora-r4``, ``twins-autolr``."""
    return f"{method}-{variant}" if variant else method


def method_folder_pattern(methods: tuple[str, ...] = METHODS) -> str:
    """A regular expression of every method folder name (Snakemake's ``method`` wildcard)."""
    names = "|".join(re.escape(method) for method in methods)
    return f"(?:{names})(?:-(?:{VARIANT_PATTERN}))?"
