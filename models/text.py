"""Text tower built from a ``TextTowerSpec`` (OpenCLIP causal or SigLIP bidirectional).

tokens (B, S) -> Embedding + learned position -> blocks (causal per spec) -> final norm
-> pool one token ("eos": argmax of token ids, as OpenCLIP; "last") -> proj -> (B, embed_dim)
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import make_blocks, make_norm, make_proj
from vlscale.errors import ConfigError
from vlscale.specs.towers import TextTowerSpec

TOKEN_INIT_STD = 0.02  # OpenCLIP text init
POS_INIT_STD = 0.01


class TextTower(nn.Module):
    def __init__(self, spec: TextTowerSpec, embed_dim: int):
        super().__init__()
        self.spec = spec
        t = spec.trunk
        self.token_embedding = nn.Embedding(spec.vocab_size, t.width)
        self.pos_embed = nn.Parameter(torch.empty(spec.context_length, t.width))
        self.blocks = make_blocks(t)
        self.norm = make_norm(t.width, t)
        self.proj = make_proj(spec.proj, t.width, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.pos_embed, std=POS_INIT_STD)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, S) token ids, S <= context_length -> (B, embed_dim) features (not normalised)."""
        b, s = tokens.shape
        if s > self.spec.context_length:
            raise ConfigError(
                "tokens",
                f"sequence length {s} exceeds context_length {self.spec.context_length}; "
                "truncate the tokens or use a model with a longer context",
            )
        x = self.token_embedding(tokens) + self.pos_embed[:s]  # (B, S, d)
        for block in self.blocks:
            x = block(x, causal=self.spec.causal)
        x = self.norm(x)
        if self.spec.pool == "eos":
            # OpenCLIP: the EOT token has the highest id in the CLIP vocabulary
            x = x[torch.arange(b, device=x.device), tokens.argmax(dim=-1)]  # (B, d)
        else:
            x = x[:, -1]  # (B, d)
        return self.proj(x)
