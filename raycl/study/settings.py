"""The resolved study, saved with its results: what produced them, in a form people can read.

``study.json`` beside the Parquet files (and the same JSON in every Parquet file's metadata under
:data:`METADATA_KEY`) holds the benchmark, model, optimizer, protocol, every arm's search space
as text (with which parameters are searched on a log scale), the seeds, the versions of raycl,
torch, ray and Python, and the study file's content hash. The report reads it (log axes for log
domains, the settings on its page); a reader of the Parquet files alone still has it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
from collections.abc import Mapping
from typing import Any

from ray.tune.search.sample import Categorical, Float, Integer

from raycl.study.schema import SCHEMA_VERSION
from raycl.study.space import is_domain, is_grid
from raycl.study.spec import Study

__all__ = ["METADATA_KEY", "SETTINGS_FILE", "log_scale", "resolved_settings", "space_text"]

#: The file beside the tables.
SETTINGS_FILE = "study.json"
#: The key of the same JSON in each Parquet file's schema metadata.
METADATA_KEY = b"raycl.study"

_SPECS = ("benchmark", "model", "optimizer", "resources", "per_experience")


def _sampler(domain: Any) -> str:
    name = type(domain.get_sampler()).__name__.lstrip("_").lower()
    return name  # uniform, loguniform, normal, ...


def space_text(value: Any) -> str:
    """A search-space value as a user would write it: ``loguniform(10, 5000)``,
    ``choice([16, 32])``, ``grid_search([0.1, 1.0])``, or the constant's repr."""
    if is_grid(value):
        return f"grid_search({list(value['grid_search'])!r})"
    if isinstance(value, Categorical):
        return f"choice({list(value.categories)!r})"
    if isinstance(value, Float):
        kind = {"loguniform": "loguniform", "normal": "randn"}.get(_sampler(value), "uniform")
        return f"{kind}({value.lower:g}, {value.upper:g})"
    if isinstance(value, Integer):
        kind = "lograndint" if _sampler(value) == "loguniform" else "randint"
        return f"{kind}({value.lower}, {value.upper})"
    if is_domain(value):
        return type(value).__name__
    return repr(value)


def log_scale(value: Any) -> bool:
    """Whether a search-space value is searched on a log scale."""
    return isinstance(value, (Float, Integer)) and _sampler(value) == "loguniform"


def _versions() -> dict[str, str]:
    import ray
    import torch

    import raycl

    return {"raycl": raycl.__version__, "torch": str(torch.__version__),
            "ray": str(ray.__version__), "python": platform.python_version()}


def resolved_settings(study: Study, filename: str, text: str,
                      confirm_seeds: list[int]) -> dict[str, Any]:
    """The study as it runs (overrides applied), as plain JSON-able values."""
    plain: dict[str, Any] = {}
    for f in dataclasses.fields(study):
        if f.name == "arms":
            continue
        value = getattr(study, f.name)
        plain[f.name] = dataclasses.asdict(value) if f.name in _SPECS else value
    plain["confirm_seeds"] = list(confirm_seeds)  # resolved (None means "3 fresh seeds")
    plain["arms"] = [{"name": arm.name, "baseline": arm.baseline,
                      "space": {k: space_text(v) for k, v in arm.space.items()},
                      "log_scale": sorted(k for k, v in arm.space.items() if log_scale(v)),
                      "stability": arm.stability, "stability_start": arm.stability_start}
                     for arm in study.arms]
    plain["study_file"] = filename
    plain["study_file_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    plain["versions"] = _versions()
    plain["schema_version"] = SCHEMA_VERSION
    return plain


def training_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the settings that decides what a trial computes (everything but the run's
    bookkeeping: description, resources, concurrency, failures, checkpoints kept, versions)."""
    skip = {"description", "resources", "max_concurrent", "max_failures", "keep_checkpoints",
            "versions", "study_file", "study_file_sha256"}
    return {k: v for k, v in settings.items() if k not in skip}
