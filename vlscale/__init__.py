"""vlscale: plan, simulate and train contrastive vision-language runs (CLIP, SigLIP, EVA-CLIP).

The planner (this package) never imports torch, so the CLI starts in well under a second.
"""

__version__ = "0.1.0"
