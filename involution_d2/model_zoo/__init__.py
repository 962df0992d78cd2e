"""This project's model zoo, in the style of ``detectron2.model_zoo``: every config of
``configs/`` by its path, shipped inside the installed package."""
from .model_zoo import get, get_config, get_config_file, list_configs

__all__ = ["get", "get_config", "get_config_file", "list_configs"]
