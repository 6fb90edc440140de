"""Distillation methods, one module each, readable top to bottom.

A method implements the small interface in :mod:`raykd.distill.base` (build models, prepare
batches, compute the loss for a batch, evaluate); the engine (:mod:`raykd.engine`) runs it on Ray
Train without knowing which method it is.
"""
