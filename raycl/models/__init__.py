"""Models: dynamic (growing) modules, multi-head classifiers and the usual CL backbones.

Every backbone exposes ``features`` (input -> penultimate features, ``feature_size`` wide)
and ``classifier`` (the last layer), where plugins such as CWR* and CoPE look for them.
"""

from raycl.models.cnn import SimpleCNN
from raycl.models.dynamic import DynamicModule, MultiHeadClassifier, MultiTaskModule
from raycl.models.mlp import MultiHeadMLP, SimpleMLP
from raycl.models.resnet import MTResNet18Reduced, ResNet18Reduced

__all__ = [
    "DynamicModule",
    "MTResNet18Reduced",
    "MultiHeadClassifier",
    "MultiHeadMLP",
    "MultiTaskModule",
    "ResNet18Reduced",
    "SimpleCNN",
    "SimpleMLP",
]
