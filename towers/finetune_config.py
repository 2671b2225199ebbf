"""The settings of a fine-tuning run (:class:`FinetuneConfig`, saved in its manifest) and the choices they
take; what each means is told in :mod:`vistaste.towers.finetune`.
"""
from __future__ import annotations

import dataclasses

from vistaste.data.efficientnet_arch import BLOCKS  # 16 MBConv blocks, 0..15
from vistaste.data.split import SplitRule

POSITIVES = ("tags", "coclicks", "augment")
TAG_WEIGHTINGS = ("coclick-lift", "raw")
OUTPUTS = ("projection", "features")


@dataclasses.dataclass
class FinetuneConfig(SplitRule):
    """Every knob of a fine-tuning run; saved in the manifest. The split fields are inherited from
    :class:`~vistaste.data.split.SplitRule` (co-click positives come from the training part only)."""

    positives: str = "tags"
    from_scratch: bool = False
    # One pass over the training items: on the built-in world (3 seeds) 1 epoch of tag pairs gave the best
    # neighbour agreement and two-tower recall of 1, 2 and 6 (0.882 / 0.876 / 0.764 agreement; README).
    epochs: int = 1
    batch_size: int = 64  # pairs per step: 2 x batch_size images, batch_size - 1 negatives per anchor
    steps_per_epoch: int | None = None  # default: ceil(training items / batch_size)
    # The network runs at this resolution, for training and for the exported backbone. 224 px, the pretrained
    # network's own and the product's embedding resolution (session 12; 128 before): on the built-in world
    # (1 epoch, tags weighted, 3 seeds) nearest-neighbour palette+pattern agreement 0.941 vs 0.885 and two-tower
    # warm recall@50 0.408 vs 0.370, for 72 s of steps instead of 39 s and 2.7 GB instead of 1.8 (README).
    image_size: int = 224
    first_trainable_block: int = 11  # blocks before it stay frozen (from pretrained weights)
    head_dims: tuple[int, ...] = (512, 128)
    # What the exported backbone returns: the 1280-d pooled features under the projection head (as SimCLR
    # found, the representation before the head keeps what the loss does not need and transfers better), or
    # the unit projection the loss saw. Measured on the built-in world (benchmarks/finetune.py, 1 seed):
    # features won for tags (nearest neighbour same palette+pattern 0.835 vs 0.676) and co-clicks (0.750
    # vs 0.732; content-kNN recall@50 0.198 vs 0.179).
    output: str = "features"
    temperature: float = 0.1
    learning_rate: float = 1e-3
    tag_weighting: str = "coclick-lift"
    coclick_window_minutes: float = 60.0
    seed: int = 0

    def __post_init__(self):
        self.head_dims = tuple(int(d) for d in self.head_dims)
        if self.positives not in POSITIVES:
            raise ValueError(f"positives must be one of {', '.join(POSITIVES)}, got {self.positives!r}")
        if self.tag_weighting not in TAG_WEIGHTINGS:
            raise ValueError(f"tag_weighting must be one of {', '.join(TAG_WEIGHTINGS)}, got {self.tag_weighting!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        for name in ("epochs", "batch_size", "coclick_window_minutes", "temperature", "learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (the other pairs are the negatives), got {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive or None, got {self.steps_per_epoch}")
        if not 32 <= self.image_size <= 512:
            raise ValueError(f"image_size must be in [32, 512] pixels, got {self.image_size}")
        if not 1 <= self.first_trainable_block < BLOCKS:
            raise ValueError(f"first_trainable_block must be in [1, {BLOCKS - 1}], got {self.first_trainable_block}")
        if not self.head_dims or min(self.head_dims) <= 0:
            raise ValueError(f"head_dims must be positive sizes, got {self.head_dims}")
        self.split_spec()
