"""grid_points: the learning rates of a conventional baseline's grid, one fine-tune task each."""

from kfp import dsl

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def grid_points(config_yaml: str, config_overrides: list[str], methods: list[str], method: str) -> list[float]:
    """Return ``baselines.lr_grid`` of the resolved config (the items of the grid's ParallelFor).

    A step, not a compile-time constant, so a run's config_overrides can change the grid.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        method: The grid-tuned method (ft or flyp).
    """
    from components.runtime import load_step_config

    config = load_step_config(config_yaml, config_overrides, methods)
    config.check_method(method, purpose="grid")
    return config.baseline_lr_grid
