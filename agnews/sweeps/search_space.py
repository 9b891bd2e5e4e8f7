"""Search spaces from config: Hydra sweep syntax or an explicit schema -> Optuna distributions, values -> overrides."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from agnews.errors import ConfigError


@dataclass
class Param:
    """One searched parameter: ``key`` as written in the override (``+`` prefix kept), Optuna ``name``, distribution."""

    key: str
    name: str
    distribution: Any


def format_value(value: Any) -> str:
    """A Python value as a Hydra override value (strings single-quoted, so ':' '/' ',' '=' are safe)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ConfigError(f"cannot pass {value} as an override value")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    raise ConfigError(f"cannot pass {value!r} ({type(value).__name__}) as an override value")


def _explicit(key: str, spec: Mapping) -> Any:
    import optuna.distributions as d

    kind = spec.get("type")
    try:
        if kind == "float":
            return d.FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)),
                                       step=spec.get("step"))
        if kind == "int":
            return d.IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)),
                                     step=int(spec.get("step", 1)))
        if kind == "categorical":
            return d.CategoricalDistribution(list(spec["choices"]))
    except (KeyError, ValueError, TypeError) as error:
        raise ConfigError(f"search space entry '{key}': {error!r} in {dict(spec)}") from error
    raise ConfigError(f"search space entry '{key}': type must be float, int or categorical, got {kind!r}")


def _from_sweep(override: Override) -> Any:
    import optuna.distributions as d

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(x, int) for x in (start, stop, step)) and step > 0 and stop > start:
            last = start + step * ((stop - 1 - start) // step)
            return d.IntDistribution(start, last, step=step)
        return d.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log)
        return d.FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"unsupported sweep in '{override.input_line}'")


def parse_search_space(params: Mapping | None, cli_overrides: list[str]) -> tuple[list[Param], list[str]]:
    """Searched parameters and fixed overrides, from ``hydra.sweeper.params`` plus the command line.

    The command line wins over ``params`` for the same key; a command-line sweep (``lr=interval(1e-5,1e-3)``,
    ``seed=1,2``) joins the search space, a plain ``key=value`` is passed to every trial.
    """
    parser = OverridesParser.create()
    entries: dict[str, tuple[str, Any]] = {}
    for key, spec in (params or {}).items():
        if isinstance(spec, Mapping):
            name = key.lstrip("+~")
            entries[name] = ("explicit", (key, spec))
        else:
            text = f"{key}={spec}" if not isinstance(spec, bool) else f"{key}={'true' if spec else 'false'}"
            override = parser.parse_override(text)
            entries[override.key_or_group] = ("override", override)
    for override in parser.parse_overrides(cli_overrides):
        entries[override.key_or_group] = ("override", override)

    searched: list[Param] = []
    fixed: list[str] = []
    for name, (kind, item) in entries.items():
        if kind == "explicit":
            key, spec = item
            searched.append(Param(key=key, name=name, distribution=_explicit(key, spec)))
        elif item.is_sweep_override():
            searched.append(Param(key=item.get_key_element(), name=name, distribution=_from_sweep(item)))
        else:
            fixed.append(item.input_line)
    return searched, fixed
