"""build_zeroshot: the zero-shot CLIP classifier every method starts from."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def build_zeroshot(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    prepared: Input[Dataset],
    zeroshot: Output[Model],
):
    """Build the zero-shot classifier: image tower plus a head of averaged, normalised prompt embeddings.

    Saved as ``model.safetensors`` + ``model_card.json``; every search trial and fine-tuning run starts
    from these weights, and WiSE-FT interpolates towards them.
    """
    from autoft.stages import stage_zeroshot
    from components.runtime import load_step_config, stopwatch

    config = load_step_config(config_yaml, config_overrides, methods)
    with stopwatch() as timing:
        stage_zeroshot(config, prepared.path, zeroshot.path)
    zeroshot.metadata.update(
        {
            "method": "zeroshot",
            "model": config.model.name,
            "pretrained": config.model.pretrained,
            "head_mode": config.model.head_mode,
            "seconds": timing["seconds"],
        }
    )
