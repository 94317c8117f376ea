"""Checks of configuration values by type and range, for the commands that read them.

Each failure is a ``SplitnetError`` of one line: the key, the value as given and what
would work. Hydra hands over whatever YAML parsed (``abc``, ``true``, ``[1, 2]``), so
every check tests the type before the range, and a bool never passes for a number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from splitnet.errors import SplitnetError


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def need(ok: bool, key: str, value: Any, valid: str) -> None:
    """Refuse ``key=value`` unless ``ok``; ``valid`` says what would work."""
    if not ok:
        raise SplitnetError(f"{key}={value!r}: {valid}")


def need_int(group: Mapping[str, Any], prefix: str, key: str, least: int) -> int:
    value = group.get(key)
    need(is_int(value) and value >= least, f"{prefix}.{key}", value, f"must be an integer >= {least}")
    return value
