"""Structured pruning: remove whole units (MLP channels, attention heads, blocks) for a smaller dense model.

layouts (where units sit, per family, as data) -> plan (ratio to uniform widths) -> scores (which
channels and heads) and blocks (which blocks, and the linear bridge for a removed run) -> surgery
(narrow layers, least-squares compensation, drop blocks) -> finalize (config edits) -> distill (optional
training towards the dense model); run.py holds the block loop and the public ``shrink``; options.py
its one options object.
"""
from .options import ShrinkOptions, ShrinkRunOptions
from .run import shrink

__all__ = ["ShrinkOptions", "ShrinkRunOptions", "shrink"]
