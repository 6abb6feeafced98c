"""The resolved study, saved with its results: what produced them, in a form people can read.

``study.json`` beside the Parquet files (and the same JSON in every Parquet file's metadata under
:data:`METADATA_KEY`) holds the benchmark, model, optimizer, protocol, every arm's search space
as text (with which parameters are searched on a log scale), the seeds, the versions of raycl,
torch, ray and Python, and the study file's content hash. The report reads it (log axes for log
domains, the settings on its page); a reader of the Parquet files alone still has it.

It is also the study's fingerprint: ``--resume`` compares its :func:`training_settings` with
those of the study file as it is now (:func:`study_changes`) and refuses a changed study, so
results never mix trials of two studies. ``--allow-changed`` accepts a change only when it
widens what is searched (:attr:`Change.widening`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Mapping
from typing import Any

from ray.tune.search.sample import Categorical, Float, Integer

from raycl.study.schema import SCHEMA_VERSION
from raycl.study.space import is_domain, is_grid
from raycl.study.spec import Study

__all__ = ["METADATA_KEY", "SETTINGS_FILE", "WIDENING", "Change", "log_scale", "plugin_specs",
           "resolved_settings", "space_text", "study_changes", "training_settings"]

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


def plugin_specs(study: Study, arm: Any, model: Any = None) -> list[str]:
    """``plugin_spec`` of each plugin the arm builds from its first config (the same on every
    run of an unchanged study), so a changed plugin factory changes the study's fingerprint."""
    from raycl.plugins.base import plugin_spec
    from raycl.study.build import arm_needs_model, build_model, build_plugins, nominal_shape
    from raycl.study.space import arm_rng, sample_configs

    configs = sample_configs(arm.space, 1, arm_rng(study.search_seed, arm.name),
                             "grid" if study.search == "grid" else "random")
    config = dict(configs[0]) if configs else {}
    if study.selection == "per_experience":  # the values the protocol sets
        config["lr"] = study.per_experience.lr_grid[0]
        if arm.stability:
            config[arm.stability] = arm.stability_start
    try:
        if model is None and arm_needs_model(arm):
            shape, n_classes = nominal_shape(study.benchmark)
            model = build_model(study.model, shape, n_classes, study.benchmark.resolved_scenario)
        return [plugin_spec(p) for p in build_plugins(arm, config, model)]
    except Exception as err:  # validated already; say so rather than fail the record
        return [f"<not built: {type(err).__name__}: {' '.join(str(err).split())}>"]


def resolved_settings(study: Study, filename: str, text: str,
                      confirm_seeds: list[int]) -> dict[str, Any]:
    """The study as it runs (overrides applied), as plain JSON-able values."""
    plain: dict[str, Any] = {}
    for f in dataclasses.fields(study):
        if f.name == "arms":
            continue
        value = getattr(study, f.name)
        if f.name == "callbacks":  # objects: their class names
            value = [f"{type(c).__module__}.{type(c).__qualname__}" for c in value]
        plain[f.name] = dataclasses.asdict(value) if f.name in _SPECS else value
    plain["confirm_seeds"] = list(confirm_seeds)  # resolved (None means "3 fresh seeds")
    plain["arms"] = [{"name": arm.name, "baseline": arm.baseline,
                      "space": {k: space_text(v) for k, v in arm.space.items()},
                      "log_scale": sorted(k for k, v in arm.space.items() if log_scale(v)),
                      "stability": arm.stability, "stability_start": arm.stability_start,
                      "joint": arm.joint, "plugins": plugin_specs(study, arm)}
                     for arm in study.arms]
    plain["study_file"] = filename
    plain["study_file_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    plain["versions"] = _versions()
    plain["schema_version"] = SCHEMA_VERSION
    return plain


#: Settings that ``--resume --allow-changed`` lets grow: ``num_samples`` (more configs per arm:
#: the configs drawn before are drawn first again), ``seeds`` and ``confirm_seeds`` (a superset
#: of the old ones) and ``arms`` (arms added, the others unchanged).
WIDENING = ("num_samples", "seeds", "confirm_seeds", "arms")

#: Settings that change nothing a trial computes nor which trials run: the run's bookkeeping
#: (description, resources, concurrency, retries, checkpoints kept, versions, the file's name
#: and hash) and the statistics computed from the finished rows (interval, paired_test).
_NOT_TRAINING = frozenset({"description", "resources", "max_concurrent", "max_failures",
                           "callbacks",
                           "keep_checkpoints", "keep_final_checkpoint", "versions",
                           "study_file", "study_file_sha256", "interval", "paired_test"})


def training_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the settings that decides what a trial computes and which trials run
    (everything but :data:`_NOT_TRAINING`): the study's fingerprint."""
    return {k: v for k, v in settings.items() if k not in _NOT_TRAINING}


@dataclasses.dataclass(frozen=True)
class Change:
    """One difference between two resolved studies."""

    path: str
    """Where: ``train_epochs``, ``benchmark.n_experiences``, ``arms[ewc].space.ewc_lambda``."""
    text: str
    """What, as one line: ``train_epochs: 1 -> 2``, ``arms: + si``."""
    widening: bool
    """True when it only widens what is searched (see :data:`WIDENING`): the trials already
    run are trials of the new study too."""

    def __str__(self) -> str:
        return self.text


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return f"[{', '.join(value)}]"  # plugin specs, space texts: as written, unquoted
    return repr(value)


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples as lists, ...), so a stored study compares equal."""
    return json.loads(json.dumps(value, default=str))


def _changed(path: str, old: Any, new: Any, widening: bool = False) -> Change:
    return Change(path, f"{path}: {_show(old)} -> {_show(new)}", widening)


def _record_changes(path: str, old: Mapping[str, Any], new: Mapping[str, Any],
                    skip: frozenset[str] = frozenset()) -> list[Change]:
    """Changes between two records (settings, a spec, an arm): a key missing on either side
    was not recorded by that raycl, so it is not compared."""
    out: list[Change] = []
    for key in [k for k in new if k in old and k not in skip]:
        where = f"{path}.{key}" if path else key
        a, b = old[key], new[key]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _record_changes(where, a, b)
        else:
            out.append(_changed(where, a, b))
    return out


def _space_changes(path: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    out = [Change(path, f"{path}: + {k} = {_show(new[k])}", False) for k in new if k not in old]
    out += [Change(path, f"{path}: - {k}", False) for k in old if k not in new]
    out += [_changed(f"{path}.{k}", old[k], new[k]) for k in new
            if k in old and old[k] != new[k]]
    return out


def _arm_changes(old: list[Any], new: list[Any]) -> list[Change]:
    before = {a.get("name"): a for a in old if isinstance(a, dict)}
    after = {a.get("name"): a for a in new if isinstance(a, dict)}
    out = [Change("arms", f"arms: + {name}", True) for name in after if name not in before]
    out += [Change("arms", f"arms: - {name}", False) for name in before if name not in after]
    for name in [n for n in after if n in before]:
        a, b = before[name], after[name]
        where = f"arms[{name}]"
        space_a, space_b = a.get("space"), b.get("space")
        moved = isinstance(space_a, dict) and isinstance(space_b, dict) and space_a != space_b
        if moved:
            out += _space_changes(f"{where}.space", space_a, space_b)
        # log_scale follows the space; the plugins' specs hold a sampled value, which a
        # changed space changes too: both would only repeat the space's change
        out += _record_changes(where, a, b,
                               frozenset({"space", "log_scale", *(("plugins",) if moved else ())}))
    return out


def _seed_change(key: str, old: Any, new: Any) -> Change:
    grows = (isinstance(old, list) and isinstance(new, list) and set(old) < set(new))
    return _changed(key, old, new, widening=grows)


def study_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """How the resolved study ``new`` differs from ``old`` (the one that wrote the results), in
    the settings that decide what trials compute (:func:`training_settings`). Settings one of
    them does not record are not compared; ``log_scale`` follows the space."""
    a, b = training_settings(_plain(dict(old))), training_settings(_plain(dict(new)))
    out = _record_changes("", a, b, frozenset({"arms", "num_samples", "seeds", "confirm_seeds"}))
    if "num_samples" in a and "num_samples" in b and a["num_samples"] != b["num_samples"]:
        grows = (isinstance(a["num_samples"], int) and isinstance(b["num_samples"], int)
                 and b["num_samples"] > a["num_samples"])
        out.append(_changed("num_samples", a["num_samples"], b["num_samples"], widening=grows))
    for key in ("seeds", "confirm_seeds"):
        if key in a and key in b and sorted(map(str, a[key] or [])) != sorted(
                map(str, b[key] or [])):
            out.append(_seed_change(key, a[key], b[key]))
    if isinstance(a.get("arms"), list) and isinstance(b.get("arms"), list):
        out += _arm_changes(a["arms"], b["arms"])
    return out
