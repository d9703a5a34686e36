"""Bytes per element of the tensors the trainer keeps in a fixed dtype, whatever the compute
precision: the one home of these constants for memory, op lists and the step's collectives.

The compute precision's own width is ``vlscale.specs.recipes.BYTES_PER_ELEMENT`` (fp32 4,
bf16 / fp16 2). Everything below is fixed by how ``trainer/`` is written:

    FP32          4  an fp32 element: FSDP2's persistent parameter shards, sharded gradients,
                     master weights and optimizer state (``trainer.parallelize``)
    REDUCE_BYTES  4  gradients are reduced in fp32: ``MixedPrecisionPolicy(reduce_dtype=fp32)``
    LOSS_BYTES    4  the contrastive losses normalise, gather and hop embeddings in fp32 and
                     keep logits and losses in fp32 (``trainer.losses``)
    STAT_BYTES    4  norm statistics and the attention logsumexp are saved in fp32
    INDEX_BYTES   8  int64 token ids and FLIP's kept-patch indices
"""

from __future__ import annotations

FP32 = 4
REDUCE_BYTES = FP32
LOSS_BYTES = FP32
STAT_BYTES = FP32
INDEX_BYTES = 8
