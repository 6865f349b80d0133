"""Baseline recommenders behind the one interface the evaluator drives (the attention model implements
it too): popularity (``models.popularity``), transition kNN (``models.transition_knn``) and river's
matrix factorisation (``models.river_mf``), with the interface and the ranking helpers they share in
``models.recommender``. This module gathers them under one name: ``from models.baselines import ...``.

Online and in-process: numpy state grown by capacity doubling, no I/O. Items and users are the dense
indices of an :class:`~models.events.EventLog`; the catalogue grows as ``learn`` sees new items, and a
model only ever recommends items it has learned.
"""
from __future__ import annotations

from models.popularity import DecayedPopularity, ScenePopularity
from models.recommender import PAD, Recommender, grow, in_scene, rank_shared, scene_mask, top_k
from models.river_mf import RiverMF
from models.transition_knn import TransitionKNN

__all__ = ["PAD", "DecayedPopularity", "Recommender", "RiverMF", "ScenePopularity", "TransitionKNN", "grow",
           "in_scene", "rank_shared", "scene_mask", "top_k"]
