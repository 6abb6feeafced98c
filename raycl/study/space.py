"""Search spaces: checking Ray Tune domains, sampling them deterministically, reading them back.

raycl draws the configs of 'random' and 'grid' studies itself (instead of letting Tune's
``BasicVariantGenerator`` do it), with a generator seeded from the study and the arm name, so the
trial set is identical on every run of the same study file: ``--resume`` can tell which trials are
already done, and two runs can be compared trial by trial. Importing this module imports
``ray.tune`` (about a second) but never starts Ray.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from ray.tune.search.sample import Categorical, Domain, Float, Function, Integer

from raycl.study.schema import param_column

__all__ = [
    "arm_rng",
    "check_space",
    "enumerate_grid",
    "is_constant",
    "is_domain",
    "is_grid",
    "params_from_row",
    "sample_configs",
    "to_plain",
]

_SCALARS = (str, int, float, bool)


def is_grid(value: Any) -> bool:
    """True for ``tune.grid_search([...])`` (a dict with the single key 'grid_search')."""
    return (isinstance(value, Mapping) and list(value) == ["grid_search"]
            and isinstance(value["grid_search"], (list, tuple)))


def is_domain(value: Any) -> bool:
    """True for a samplable Ray Tune domain (``tune.uniform``, ``tune.choice``, ...)."""
    return isinstance(value, Domain) and not isinstance(value, Function)


def is_constant(value: Any) -> bool:
    """True for a constant space value: a str, int, float or bool (None would be lost in the
    ``param_<name>`` columns, where a missing value means "not a parameter of this arm")."""
    return isinstance(value, _SCALARS) or isinstance(value, np.generic)


def to_plain(value: Any) -> Any:
    """A NumPy scalar as the Python scalar it holds (Tune domains sample NumPy types)."""
    return value.item() if isinstance(value, np.generic) else value


def check_space(space: Any, search: str) -> list[tuple[str, str]]:
    """Problems with ``space`` for the search algorithm ``search``, as (key, what) pairs."""
    if not isinstance(space, Mapping):
        return [("", f"must be a dict of name -> domain or constant, got {type(space).__name__}")]
    problems: list[tuple[str, str]] = []
    for key, value in space.items():
        if not isinstance(key, str) or not key.isidentifier():
            problems.append((str(key), "parameter names must be identifiers (they become "
                                       "param_<name> columns)"))
        elif isinstance(value, Function):
            problems.append((key, "tune.sample_from is not supported: use a domain "
                                  "(tune.uniform, tune.choice, ...) or a constant"))
        elif is_grid(value):
            bad = [v for v in value["grid_search"] if not is_constant(v)]
            if not value["grid_search"]:
                problems.append((key, "grid_search needs at least one value"))
            elif bad:
                problems.append((key, f"grid_search values must be str/int/float/bool, got "
                                      f"{type(bad[0]).__name__}"))
            elif search == "optuna":
                problems.append((key, "grid_search cannot be used with search='optuna'"))
        elif is_domain(value):
            if search == "grid":
                problems.append((key, f"search='grid' needs grid_search or constants, got "
                                      f"the random domain {type(value).__name__}"))
            elif isinstance(value, Categorical) and not all(
                    is_constant(c) for c in value.categories):
                problems.append((key, "tune.choice values must be str/int/float/bool"))
            elif search == "optuna" and not isinstance(value, (Float, Integer, Categorical)):
                problems.append((key, f"{type(value).__name__} has no Optuna equivalent"))
        elif not is_constant(value):
            problems.append((key, f"{value!r} is neither a Ray Tune domain nor a constant "
                                  f"(str, int, float, bool)"))
    return problems


def arm_rng(search_seed: int, arm_name: str) -> np.random.Generator:
    """The generator that samples one arm's space: adding or removing an arm leaves the other
    arms' configs unchanged."""
    return np.random.default_rng([int(search_seed), zlib.crc32(arm_name.encode())])


def enumerate_grid(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the grid_search values (constants fixed, domains left out)."""
    keys = [k for k, v in space.items() if is_grid(v)]
    combos = itertools.product(*(space[k]["grid_search"] for k in keys))
    return [{k: to_plain(v) for k, v in zip(keys, combo)} for combo in combos]


def sample_configs(space: Mapping[str, Any], num_samples: int, rng: np.random.Generator,
                   search: str = "random") -> list[dict[str, Any]]:
    """The configs of one arm, in a fixed order, as dicts of plain Python values.

    'random': ``num_samples`` rounds, each crossing the whole grid with fresh draws of every
    domain (Tune's semantics), without repeats: a config drawn twice (small discrete spaces)
    is drawn again, and a space with fewer distinct configs gives fewer. 'grid': the grid once.
    An empty space gives one empty config.
    """
    grid = enumerate_grid(space)
    if search == "grid" or not any(is_domain(v) for v in space.values()):
        rounds, attempts = 1, 1  # nothing random: more rounds would repeat the same configs
    else:
        rounds, attempts = num_samples, 20 * num_samples
    target = rounds * len(grid)
    configs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(attempts):
        for combo in grid:
            if len(configs) >= target:
                return configs
            config: dict[str, Any] = {}
            for key, value in space.items():
                if is_grid(value):
                    config[key] = combo[key]
                elif is_domain(value):
                    config[key] = to_plain(value.sample(random_state=rng))
                else:
                    config[key] = to_plain(value)
            text = repr(sorted(config.items()))
            if text not in seen:
                seen.add(text)
                configs.append(config)
    return configs


def params_from_row(space: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """An arm's config from a trials-table row, with the types its space gives (Parquet holds
    an int parameter as a float where another arm leaves the column empty)."""
    params = {}
    for key, domain in space.items():
        value = row.get(param_column(key))
        if isinstance(domain, Categorical):
            value = next((c for c in domain.categories if c == value), value)
        elif isinstance(domain, Integer):
            value = int(value)
        elif is_domain(domain):
            value = float(value)
        elif not is_grid(domain):
            value = to_plain(domain)
        params[key] = to_plain(value)
    return params
