"""Networks built from injected layers; a quantization policy decides each layer."""
from .registry import build_model, get_entry, list_models, register_model
from . import resnet_cifar  # noqa: F401  (registers the CIFAR ResNets)
from . import resnet_imagenet  # noqa: F401  (registers the ImageNet and MNIST ResNets)
from . import mobilenetv2  # noqa: F401  (registers MobileNetV2, CIFAR and ImageNet stems)

__all__ = ["build_model", "get_entry", "list_models", "register_model"]
from .checkpoint import (CheckpointError, build_from_checkpoint, load_weights, read_checkpoint,
                         save_checkpoint)

__all__ += ["CheckpointError", "build_from_checkpoint", "load_weights", "read_checkpoint",
            "save_checkpoint"]
