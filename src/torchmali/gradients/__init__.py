"""Gradient methods (``gradient=``) and their registry."""

from __future__ import annotations

from .base import REGISTRY, GradientMethod, register, resolve
from .direct import Direct

__all__ = ["REGISTRY", "Direct", "GradientMethod", "register", "resolve"]
