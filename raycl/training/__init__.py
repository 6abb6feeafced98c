"""The strategy loop: ``BaseStrategy`` and ``Naive``."""

from raycl.training.strategy import STATE_FORMAT_VERSION, BaseStrategy, Clock, Naive

SupervisedTemplate = BaseStrategy  # Avalanche's newer name for the same loop

__all__ = ["STATE_FORMAT_VERSION", "BaseStrategy", "Clock", "Naive", "SupervisedTemplate"]
