"""Config fields that `nestkit.config.derive` fills (decoder.num_classes follows model.num_classes, ...).

They are None in a config built by hand; a model module reads them through `filled`, so it refuses
such a config by the field's name instead of failing later on arithmetic with None.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def not_filled_error(names: list[str]) -> ValueError:
    return ValueError(
        f"model config: derived fields not filled (expected values, got None for {', '.join(names)}). "
        "Build it with nestkit.config.config_from_dict or load_config"
    )


def filled(value: T | None, name: str) -> T:
    """`value` of the derived field `name` (as `quantizer.code_dim`); a ValueError naming it when None."""
    if value is None:
        raise not_filled_error([name])
    return value
