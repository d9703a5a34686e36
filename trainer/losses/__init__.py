"""Distributed contrastive losses: CLIP softmax (gather) and SigLIP sigmoid (gather, ring).

Every loss returns this rank's MEAN over its local rows; averaging the ranks' losses and
gradients (what DDP / FSDP do) equals the single-process loss over the global batch and its
gradients. See each module's docstring for the formula and the gradient convention.
"""

from trainer.losses.clip import clip_loss
from trainer.losses.collectives import create_ring_groups, ring_group_for
from trainer.losses.siglip import siglip_loss

__all__ = ["clip_loss", "create_ring_groups", "ring_group_for", "siglip_loss"]
