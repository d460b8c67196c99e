"""zoo: a PyTorch model zoo for vision and point clouds.

Public API::

    import zoo
    model = zoo.create_model("pointnet", num_classes=10)
    zoo.list_models("pointramba*", pretrained=True)
    cfg = zoo.load_config("configs/pointnet/synthetic_shapes.yaml", ["trainer.epochs=2"])
"""
from zoo.version import __version__
from zoo.registry import create_model, list_models, model_info, register_model
from zoo.config import load_config

__all__ = ["__version__", "create_model", "list_models", "model_info", "register_model", "load_config"]
