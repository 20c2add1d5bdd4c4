"""``data.options``: one typed model per dataset, checked when the config loads.

Kept light (pydantic and the shift table's names, no torch, pandas or wilds), so that validating a
config costs nothing in the steps that never touch images (create-study, select-best). The dataset
modules read their options from here; the vocabularies (shift and corruption names, folder keys)
live here because they are what a user may write.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autoft.data.shifts import NUM_SEVERITIES, SHIFTS

# The 15 corruptions of Hendrycks & Dietterich's benchmarks, shared by ImageNet-C and CIFAR-10-C.
COMMON_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
# Shipped with CIFAR-10-C beyond the 15 standard corruptions.
CIFAR10_C_EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CIFAR_SHIFTS: tuple[str, ...] = ("cifar10_1", "cifar10_2")
CIFAR_DIRS: dict[str, str] = {
    "cifar10": "cifar-10-batches-py",
    "cifar10_c": "CIFAR-10-C",
    "cifar10_1": "CIFAR-10.1",
    "cifar10_2": "CIFAR-10.2",
}
IMAGENET_SHIFTS: tuple[str, ...] = ("imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch", "objectnet")
# Folder of each part under data.root: the names the official archives extract to.
IMAGENET_DIRS: dict[str, str] = {
    "train": "train",
    "val": "val",
    "imagenet_c": "imagenet-c",
    "imagenet_v2": "imagenetv2-matched-frequency-format-val",
    "imagenet_r": "imagenet-r",
    "imagenet_a": "imagenet-a",
    "imagenet_sketch": "sketch",
    "objectnet": "objectnet-1.0",
}
DIGITS_SPLIT_PARTS: tuple[str, ...] = ("id_train", "id_val", "ood_val", "test")
DIGITS_OOD_TEST_SHIFTS: tuple[str, ...] = (
    "gaussian_noise",
    "pixelate",
    "contrast",
    "invert",
    "thick",
    "outline",
    "textured_background",
)
# The search's OOD-val families: none is a test family, and together they cover what the tests vary
# (appearance: colorize; stroke: thin; a near degradation: gaussian_blur; occlusion: clutter).
DIGITS_OOD_VAL_SHIFTS: tuple[str, ...] = ("colorize", "thin", "gaussian_blur", "clutter")


class DatasetOptions(BaseModel):
    """Base of every dataset's options; unknown keys are errors (a typo must not silently do nothing)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class NoOptions(DatasetOptions):
    """Datasets configured by their files alone (image folders, CSV manifests, WILDS)."""


def _unique_subset(name: str, values: list[str], allowed: tuple[str, ...], allow_empty: bool = False) -> list[str]:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; allowed: {list(allowed)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: {values} lists a name twice")
    if not values and not allow_empty:
        raise ValueError(f"{name} must not be empty; allowed: {list(allowed)}")
    return values


def _folder_keys(dirs: dict[str, str], allowed: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(dirs) - set(allowed))
    if unknown:
        raise ValueError(f"dirs may rename only {sorted(allowed)}, got {unknown}")
    return dirs


class DigitsOptions(DatasetOptions):
    """The built-in digits benchmark: split shares, the search's OOD-val shift and the OOD test shifts."""

    fractions: dict[str, float] = Field(
        default_factory=lambda: {"id_train": 0.30, "id_val": 0.13, "ood_val": 0.29, "test": 0.28},
        description="shares of the images outside the pretraining pool; 'test' holds id_test and the OOD tests",
    )
    ood_val_shifts: list[str] = Field(
        default_factory=lambda: list(DIGITS_OOD_VAL_SHIFTS),
        description="the shift families of the search's OOD-val set (none may be an OOD test shift)",
    )
    ood_val_severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    ood_val_min_size: int = Field(
        500,
        ge=1,
        description="rounds of shifted copies (each in another family) are added until the split has this many "
        "examples; copies add no distinct images",
    )
    ood_test_shifts: list[str] = Field(default_factory=lambda: list(DIGITS_OOD_TEST_SHIFTS))
    test_severity: int = Field(3, ge=1, le=NUM_SEVERITIES)

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) != set(DIGITS_SPLIT_PARTS):
            raise ValueError(f"fractions needs exactly the keys {list(DIGITS_SPLIT_PARTS)}, got {sorted(value)}")
        if any(v <= 0 for v in value.values()):
            raise ValueError(f"every fraction must be > 0, got {value}")
        total = sum(value.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {total:.4f}")
        return value

    @field_validator("ood_val_severities")
    @classmethod
    def _severities(cls, value: list[int]) -> list[int]:
        if not value or any(not 1 <= s <= NUM_SEVERITIES for s in value):
            raise ValueError(f"ood_val_severities must be a non-empty list within 1..{NUM_SEVERITIES}, got {value}")
        return value

    @model_validator(mode="after")
    def _shifts(self) -> DigitsOptions:
        known = tuple(SHIFTS)
        _unique_subset("ood_test_shifts", self.ood_test_shifts, known)
        _unique_subset("ood_val_shifts", self.ood_val_shifts, known)
        shared = [s for s in self.ood_val_shifts if s in self.ood_test_shifts]
        if shared:
            raise ValueError(
                f"ood_val_shifts {shared} are also OOD test shifts; AutoFT's OOD-val must differ from the test "
                "shifts: remove them from one of the two lists"
            )
        return self


class CifarOptions(DatasetOptions):
    """CIFAR-10 with CIFAR-10-C as the OOD-val source and CIFAR-10.1/10.2 as OOD tests."""

    shifts: list[str] = Field(default_factory=lambda: list(CIFAR_SHIFTS))
    cifar10c_corruptions: list[str] = Field(default_factory=lambda: list(COMMON_CORRUPTIONS))
    cifar10c_severity: int = Field(5, ge=1, le=5)
    cifar101_version: str = "v6"
    id_val_fraction: float = Field(0.1, gt=0, lt=1, description="share of train held out as ID-val")
    split_seed: int = Field(0, ge=0, le=2**31 - 1)
    dirs: dict[str, str] = Field(default_factory=dict, description=f"rename the folders {sorted(CIFAR_DIRS)}")

    @field_validator("shifts")
    @classmethod
    def _known_shifts(cls, value: list[str]) -> list[str]:
        return _unique_subset("shifts", value, CIFAR_SHIFTS, allow_empty=True)

    @field_validator("cifar10c_corruptions")
    @classmethod
    def _known_corruptions(cls, value: list[str]) -> list[str]:
        return _unique_subset("cifar10c_corruptions", value, (*COMMON_CORRUPTIONS, *CIFAR10_C_EXTRA))

    @field_validator("dirs")
    @classmethod
    def _known_dirs(cls, value: dict[str, str]) -> dict[str, str]:
        return _folder_keys(value, CIFAR_DIRS)

    def folder(self, part: str) -> str:
        return {**CIFAR_DIRS, **self.dirs}[part]


class ImagenetOptions(DatasetOptions):
    """ImageNet-1k with ImageNet-C as the OOD-val source and five natural shifts as OOD tests."""

    shifts: list[str] = Field(default_factory=lambda: list(IMAGENET_SHIFTS))
    imagenet_c_corruptions: list[str] = Field(default_factory=lambda: list(COMMON_CORRUPTIONS))
    imagenet_c_severity: int = Field(5, ge=1, le=5)
    id_val_fraction: float = Field(0.01, gt=0, lt=1, description="share of train held out as ID-val (~13/class)")
    split_seed: int = Field(0, ge=0, le=2**31 - 1)
    objectnet_border_px: int = Field(2, ge=0, description="ObjectNet's red border, cropped before evaluation")
    dirs: dict[str, str] = Field(default_factory=dict, description=f"rename the folders {sorted(IMAGENET_DIRS)}")

    @field_validator("shifts")
    @classmethod
    def _known_shifts(cls, value: list[str]) -> list[str]:
        return _unique_subset("shifts", value, IMAGENET_SHIFTS, allow_empty=True)

    @field_validator("imagenet_c_corruptions")
    @classmethod
    def _corruption_names(cls, value: list[str]) -> list[str]:
        if not value or not all(isinstance(c, str) and c for c in value):
            raise ValueError(f"imagenet_c_corruptions must be a non-empty list of folder names, got {value!r}")
        return value

    @field_validator("dirs")
    @classmethod
    def _known_dirs(cls, value: dict[str, str]) -> dict[str, str]:
        return _folder_keys(value, IMAGENET_DIRS)

    def folder(self, part: str) -> str:
        return {**IMAGENET_DIRS, **self.dirs}[part]


OPTIONS_MODELS: dict[str, type[DatasetOptions]] = {
    "digits": DigitsOptions,
    "cifar10": CifarOptions,
    "imagenet": ImagenetOptions,
    "iwildcam": NoOptions,
    "fmow": NoOptions,
    "folder": NoOptions,
    "csv": NoOptions,
}
