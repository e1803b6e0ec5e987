"""Reasoning distillation study: the code behind the notebooks in `notebooks/`."""

__version__ = "0.1.0"
