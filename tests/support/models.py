"""Models for tests in which event types must matter.

A freshly initialised user tower reads every event type as "no effect" (zero type embeddings,
equal type weights: ``export.model.towers.UserTower``), so a test that types reach a model —
through TorchScript, a Triton config, a reference file — would pass even if they were dropped.
``with_type_effects`` gives every real type its own embedding and weight first.
"""

from __future__ import annotations

import torch

from features.behaviour import PAD_TYPE


@torch.no_grad()
def with_type_effects(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` (a ``TwoTower``), its type tables set to seeded random values; PAD stays zero."""
    tower = model.user_tower
    generator = torch.Generator().manual_seed(seed)
    weight = tower.type_embedding.weight
    weight.copy_(torch.randn(weight.shape, generator=generator))
    weight[PAD_TYPE].zero_()
    tower.type_weight.copy_(torch.randn(tower.type_weight.shape, generator=generator))
    return model
