"""Structured pruning: remove whole units (MLP channels, attention heads, blocks) for a smaller dense model.

layouts (where units sit, per family, as data) -> plan (ratio to uniform widths) -> scores (which
units) -> surgery (narrow layers, least-squares compensation, drop blocks) -> finalize (config edits);
run.py holds the block loop and the public ``shrink``.
"""
from .run import shrink

__all__ = ["shrink"]
