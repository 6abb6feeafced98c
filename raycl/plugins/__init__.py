"""Plugins: one file per method, each citing its paper.

``StrategyPlugin`` is the base class; callbacks receive the strategy typed as the ``Strategy``
protocol. Method plugins load on first use, so importing the package does not import quadprog or
every method.
"""

from __future__ import annotations

import importlib
from typing import Any

from raycl.plugins.base import HOOKS, Strategy, StrategyPlugin, plugin_spec

# public name -> module under raycl.plugins that defines it
_LAZY = {
    "EWCPlugin": "ewc",
    "RWalkPlugin": "rwalk",
    "SynapticIntelligencePlugin": "synaptic_intelligence",
    "LwFPlugin": "lwf",
    "ReplayPlugin": "replay",
    "StoragePolicy": "storage_policy",
    "ExperienceBalancedStoragePolicy": "storage_policy",
    "ClassBalancedStoragePolicy": "storage_policy",
    "GDumbPlugin": "gdumb",
    "GEMPlugin": "gem",
    "AGEMPlugin": "agem",
    "CWRStarPlugin": "cwr_star",
    "CoPEPlugin": "cope",
    "PPPloss": "cope",
    "PenaltyStabilityWarning": "_stability",
}

__all__ = ["HOOKS", "Strategy", "StrategyPlugin", "plugin_spec", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raycl.plugins' has no attribute {name!r}")
    return getattr(importlib.import_module(f"raycl.plugins.{module}"), name)
