"""Training configuration: the dataclasses (schema.py), YAML recipes and flag overrides (loading.py), and the
recipes shipped with classicnets (recipes/*.yaml, found by bare name: `--config alexnet2012_paper`)."""

from classicnets.config.loading import (
    RECIPE_DIR,
    apply_mapping,
    find_recipe,
    list_recipes,
    load_recipe,
    parse_assignment,
    resolve_config,
    set_value,
)
from classicnets.config.schema import (
    FLAG_KEYS,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    validate,
)

__all__ = [
    "FLAG_KEYS",
    "RECIPE_DIR",
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_mapping",
    "find_recipe",
    "list_recipes",
    "load_recipe",
    "parse_assignment",
    "resolve_config",
    "set_value",
    "validate",
]
