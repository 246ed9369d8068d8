"""Attribution methods, registered by name (``METHODS``)."""

from . import gradient, integrated, occlusion  # noqa: F401  (register the built-in methods)
from .base import METHODS, AttributionMethod, MethodOutput, get_method, register

__all__ = [
    "METHODS",
    "AttributionMethod",
    "MethodOutput",
    "get_method",
    "register",
]
