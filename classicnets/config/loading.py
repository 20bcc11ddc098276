"""Loading a configuration: YAML recipes (shipped ones by name), flag overrides and `section.key=value` settings.

Precedence is defaults < recipe (YAML) < flags (or keyword arguments of `fit`) < --set. A recipe is a YAML file
with the sections of classicnets.config.schema, e.g. `classicnets/config/recipes/alexnet2012_paper.yaml`;
`--config NAME` also finds a shipped recipe by its bare name. Unknown sections, keys and bad values are
UsageErrors that name them. A run folder's `config.yaml` is the fully resolved config and is itself a valid recipe.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml

from classicnets.config.schema import FLAG_KEYS, Config, sections, split_key, validate
from classicnets.errors import UsageError, first_line

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
# The most values (list items, mapping keys and values, nested) one config key may hold. The longest real one is a
# builder option list of about 20 (VGG's layer list); a YAML "billion laughs" of a few hundred bytes expands to
# millions through aliases, which copying or printing the config would then build.
MAX_VALUES_PER_KEY = 10_000


# Scalar field types -> (accepts the value?, converts it). bool is an int subclass in Python, so it is excluded
# explicitly: `epochs: true` in a recipe is a mistake, not 1.
_SCALARS: dict[type, tuple[typing.Callable[[Any], bool], typing.Callable[[Any], Any]]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda v: v),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), float),
    str: (lambda v: isinstance(v, str), lambda v: v),
}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a field's type; ints are accepted for floats, and a single string for a list."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if annotation in _SCALARS:
        accepts, convert = _SCALARS[annotation]
        if accepts(value):
            return convert(value)
    elif origin is list:
        if isinstance(value, str) and args[0] is str:
            value = [v for v in value.split(",") if v]
        if isinstance(value, list | tuple):
            _check_size(key, value)
            return [_coerce(key, v, args[0]) for v in value]
    elif origin is dict:
        if isinstance(value, dict):
            _check_size(key, value)
            return dict(value)
    else:  # pragma: no cover - a field type this function does not know
        raise TypeError(f"{key}: unsupported field type {annotation}")
    name = getattr(annotation, "__name__", str(annotation))
    raise UsageError(f"config {key}: expected {name}, got {value!r}")


def _check_size(key: str, value: Any) -> None:
    """Refuse a value holding more than MAX_VALUES_PER_KEY values, counted as copying it would (aliases expanded),
    stopping as soon as the limit is passed."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_VALUES_PER_KEY:
            raise UsageError(
                f"config {key}: holds more than {MAX_VALUES_PER_KEY:,} values (YAML aliases repeating a block?)"
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def set_value(config: Config, key: str, value: Any) -> None:
    """Set `section.name` to `value`, type-checked. Unknown keys and wrong types are UsageErrors naming them."""
    section, name = split_key(key)
    target = getattr(config, section)
    hints = typing.get_type_hints(type(target))
    setattr(target, name, _coerce(key, value, hints[name]))


def apply_mapping(config: Config, mapping: dict[str, Any], *, origin: str) -> None:
    """Apply a nested {section: {name: value}} mapping (a recipe)."""
    if not isinstance(mapping, dict):
        raise UsageError(f"{origin}: a recipe must be a mapping of sections ({', '.join(sections())})")
    for section, values in mapping.items():
        if section not in sections():
            raise UsageError(f"{origin}: unknown section {section!r}; sections are {', '.join(sections())}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UsageError(f"{origin}: section {section!r} must be a mapping of keys to values")
        for name, value in values.items():
            try:
                set_value(config, f"{section}.{name}", value)
            except UsageError as e:
                raise UsageError(f"{origin}: {e}") from None


def list_recipes() -> list[str]:
    """Names of the recipes shipped in classicnets/config/recipes."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe path as given, or a shipped recipe by bare name (`alexnet2012_paper` or `alexnet2012_paper.yaml`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if "/" not in text and "\\" not in text:
        shipped = RECIPE_DIR / (text if text.endswith((".yaml", ".yml")) else f"{text}.yaml")
        if shipped.is_file():
            return shipped
    raise UsageError(f"--config {text}: no such file or shipped recipe; shipped recipes: {', '.join(list_recipes())}")


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    path = find_recipe(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML ({first_line(e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read the recipe ({e})") from None
    return data or {}


def parse_assignment(text: str) -> tuple[str, Any]:
    """'optim.momentum=0.95' -> ('optim.momentum', 0.95); the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {text!r}: expected section.name=value, e.g. optim.momentum=0.95")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def resolve_config(
    recipe: str | Path | dict[str, Any] | Config | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    settings: list[str] | tuple[str, ...] = (),
) -> Config:
    """Defaults < recipe < `overrides` (flag names, see FLAG_KEYS, or dotted keys) < `settings` ("key=value")."""
    if isinstance(recipe, Config):
        config = Config()  # a deep copy through the checks
        apply_mapping(config, recipe.to_dict(), origin="config")
    else:
        config = Config()
        if isinstance(recipe, dict):
            apply_mapping(config, recipe, origin="config")
        elif recipe is not None:
            apply_mapping(config, load_recipe(recipe), origin=str(find_recipe(recipe)))
    for name, value in (overrides or {}).items():
        if value is None:
            continue  # a flag that was not given
        key = FLAG_KEYS.get(name, name)
        if "." not in key:
            raise UsageError(f"unknown setting {name!r}; settings are {', '.join(FLAG_KEYS)} or section.name keys")
        set_value(config, key, value)
    for text in settings:
        set_value(config, *parse_assignment(text))
    validate(config)
    return config
