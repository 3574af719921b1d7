"""Real pairs with synthetic ones mixed in (`fit --pairs DIR --synthetic CLEAN_DIR --synthetic-share 0.3`).

A capture gives 20 to 200 real (render, photo) pairs; synthetic pairs from `training degrade` add variety without
teaching the studio's own artifacts away. Which source a sample comes from is fixed by its number alone: sample k is
synthetic when floor((k + 1) * share) > floor(k * share), so exactly `share` of every stretch of samples is
synthetic, evenly spread, and the count of synthetic samples before k is floor(k * share). Each source then walks
its own seeded epoch permutations, and crops are seeded per sample as in PairDataset.batch: a micro-batch is a pure
function of (seed, index), so a resumed run replays the same data exactly. With `--reference` both sources carry
references (PairDataset draws them per sample), the synthetic pairs from the identities their degrade was given.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .dataset import PairDataset


class MixedPairs:
    def __init__(self, real: PairDataset, synthetic: PairDataset, share: float):
        if not 0 < share < 1:
            raise ValueError(f"--synthetic-share must be between 0 and 1 (exclusive), not {share}")
        if (real.references is None) != (synthetic.references is None):  # a batch stacks one kind of sample
            raise ValueError("real and synthetic pairs must both carry references (--reference) or neither")
        self.real, self.synthetic, self.share = real, synthetic, share

    def source(self, k: int) -> tuple[PairDataset, int, int]:
        """Sample number k of the run: (dataset, its sample number within that dataset, a tag for its stream)."""
        before = math.floor(k * self.share)
        if math.floor((k + 1) * self.share) > before:
            return self.synthetic, before, 1
        return self.real, k - before, 0

    def batch(self, seed: int, index: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        samples = []
        for k in range(index * batch_size, (index + 1) * batch_size):
            data, j, tag = self.source(k)
            epoch, pos = divmod(j, len(data))
            order = np.random.default_rng([seed, epoch, 101 + tag]).permutation(len(data))
            samples.append(data.sample(int(order[pos]), np.random.default_rng([seed, k, 7])))
        return tuple(torch.stack(t) for t in zip(*samples))
