"""Mosaic: an open enterprise imaging platform."""

__version__ = "0.1.0"
