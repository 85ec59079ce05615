"""Structured pruning: remove whole units (MLP channels, attention heads, blocks) for a smaller dense model.

plan -> rank blocks -> shrink -> finalize -> report. layouts (where units sit, per family, as data);
units/ (one file per kind of unit: its plan arithmetic, groups, score inputs, surgery and config keys);
plan (ratio to uniform widths, checked by transformers in checks); scores (which channels and heads)
and blocks (block scores, the linear bridge for a removed run); surgery (narrowing layers,
least-squares compensation); finalize (config edits); distill (optional training towards the dense
model); run.py holds the block loop and the public ``shrink``; options.py its one options object.
"""
from .options import ShrinkOptions, ShrinkRunOptions
from .run import shrink

__all__ = ["ShrinkOptions", "ShrinkRunOptions", "shrink"]
