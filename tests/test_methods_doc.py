"""docs/methods.md and plugin_spec against the plugins themselves.

Every plugin class's ``plugin_spec`` lists every constructor parameter with the value it was given,
and docs/methods.md names every plugin (and storage policy) with each of its parameters, so a new
plugin or parameter fails here until it is specified and documented.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import raycl.plugins as plugins
from raycl.models import SimpleMLP
from raycl.plugins import StrategyPlugin, plugin_spec
from raycl.training import BaseStrategy

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def _given() -> dict[str, dict[str, object]]:
    """Per plugin class, a value other than the default for every constructor parameter."""
    return {
        "EWCPlugin": dict(ewc_lambda=7.5, mode="online", decay_factor=0.5,
                          keep_importance_data=True, fisher="empirical"),
        "RWalkPlugin": dict(ewc_lambda=3.0, ewc_alpha=0.5, delta_t=4),
        "SynapticIntelligencePlugin": dict(si_lambda=[0.1, 0.2], excluded_parameters=["features"],
                                           device="cpu", eps=0.01),
        "LwFPlugin": dict(alpha=[0.0, 0.5], temperature=3.0),
        "ReplayPlugin": dict(mem_size=20,
                             storage_policy=plugins.ClassBalancedStoragePolicy({}, 20),
                             memory_batches="balanced"),
        "GDumbPlugin": dict(mem_size=30),
        "GEMPlugin": dict(patterns_per_experience=8, memory_strength=0.25),
        "AGEMPlugin": dict(patterns_per_experience=8, sample_size=16),
        "CWRStarPlugin": dict(model=SimpleMLP(4, 5, 6), cwr_layer_name="classifier",
                              freeze_remaining_model=False),
        "CoPEPlugin": dict(mem_size=50, n_classes=4, p_size=8, alpha=0.9, T=0.5),
    }


def _plugin_classes() -> dict[str, type]:
    out = {}
    for name in plugins.__all__:
        obj = getattr(plugins, name)
        if isinstance(obj, type) and issubclass(obj, StrategyPlugin) and obj is not StrategyPlugin:
            out[name] = obj
    return out


def _parameters(cls: type) -> list[str]:
    return list(inspect.signature(cls.__init__).parameters)[1:]


def test_the_table_covers_every_plugin_and_parameter():
    given, classes = _given(), _plugin_classes()
    assert set(given) == set(classes)
    for name, cls in classes.items():
        assert list(given[name]) == _parameters(cls), name


@pytest.mark.parametrize("name", sorted(_given()))
def test_plugin_spec_lists_every_parameter_with_the_value_given(name):
    kwargs = _given()[name]
    plugin = getattr(plugins, name)(**kwargs)

    def shown(v):
        plain = v is None or isinstance(v, (bool, int, float, str, list))
        return repr(v) if plain else f"<{type(v).__name__}>"

    expected = f"{name}(" + ", ".join(f"{k}={shown(v)}" for k, v in kwargs.items()) + ")"
    assert plugin_spec(plugin) == expected
    # and with every default: each parameter still listed, with the default's value
    required = {k: v for k, v in kwargs.items()
                if inspect.signature(type(plugin).__init__).parameters[k].default
                is inspect.Parameter.empty}
    spec = plugin_spec(getattr(plugins, name)(**required))
    where = [spec.find(f"{k}=") for k in kwargs]
    assert spec.startswith(f"{name}(") and -1 not in where and where == sorted(where), spec


def _sections() -> list[str]:
    return re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.M)


def _documented_together(name: str, params: list[str]) -> None:
    """Some section of docs/methods.md names ``name`` and every one of ``params``."""
    sections = [s for s in _sections() if f"`{name}`" in s or f"`{name}(" in s]
    assert sections, f"docs/methods.md does not name {name}"
    text = "\n".join(sections)
    missing = [p for p in params if f"`{p}`" not in text and f"`{p}=" not in text]
    assert not missing, f"docs/methods.md: {name}'s section does not name {missing}"


@pytest.mark.parametrize("name", sorted(_given()))
def test_methods_doc_names_every_plugin_and_its_parameters(name):
    _documented_together(name, _parameters(getattr(plugins, name)))


@pytest.mark.parametrize("name", ["ExperienceBalancedStoragePolicy",
                                  "ClassBalancedStoragePolicy", "PPPloss"])
def test_methods_doc_names_the_helpers_and_their_parameters(name):
    _documented_together(name, _parameters(getattr(plugins, name)))


def test_methods_doc_describes_the_loop_switch():
    assert "reset_optimizer" in _parameters(BaseStrategy)
    _documented_together("BaseStrategy", ["reset_optimizer", "optimizer"])


def test_spec_of_a_plugin_built_positionally_equals_the_keyword_one():
    a = plugins.EWCPlugin(100, "online", 0.9)
    b = plugins.EWCPlugin(ewc_lambda=100.0, mode="online", decay_factor=0.9)
    assert plugin_spec(a) == plugin_spec(b) == (
        "EWCPlugin(ewc_lambda=100.0, mode='online', decay_factor=0.9, "
        "keep_importance_data=False, fisher='minibatch')")
