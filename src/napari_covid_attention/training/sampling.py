"""Uniform, size-balanced and dual sampling (Ouyang et al. 2020, DESIGN.md section 2).

Cases are grouped by (class, infection-size bin). Group j with n_j cases is drawn with
probability p_j = n_j^q / sum_i n_i^q: q = 1 is uniform sampling (every case equally
likely), q = 0 draws every group equally often, so rare groups such as small-infection
COVID-19 and large-infection CAP are seen as often as common ones. Dual sampling trains
one model of each kind and ensembles them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

# Infection fraction (infection / lung volume) bin edges. The sister paper reports the
# largest gains at 0.01-10 %; these bins separate small, medium and large infections.
DEFAULT_SIZE_BIN_EDGES = (0.01, 0.03, 0.10)


def size_bins(infection_fraction: Sequence[float], edges: Sequence[float] = DEFAULT_SIZE_BIN_EDGES) -> np.ndarray:
    """Bin index of each case's infection fraction (0 = smallest)."""
    return np.digitize(np.asarray(infection_fraction, dtype=float), np.asarray(edges, dtype=float))


def group_ids(labels: Sequence[int], bins: Sequence[int]) -> np.ndarray:
    """One integer per (class, size bin) group."""
    labels = np.asarray(labels, dtype=np.int64)
    bins = np.asarray(bins, dtype=np.int64)
    return labels * (int(bins.max(initial=0)) + 1) + bins


def group_probabilities(groups: Sequence[int], q: float) -> dict[int, float]:
    """p_j = n_j^q / sum_i n_i^q over the groups present."""
    ids, counts = np.unique(np.asarray(groups), return_counts=True)
    powered = counts.astype(float) ** q
    return {int(g): float(p) for g, p in zip(ids, powered / powered.sum(), strict=True)}


def sample_weights(groups: Sequence[int], q: float) -> np.ndarray:
    """Per-case weights realising p_j: each case of group j gets p_j / n_j."""
    groups = np.asarray(groups)
    probabilities = group_probabilities(groups, q)
    ids, counts = np.unique(groups, return_counts=True)
    per_case = {int(g): probabilities[int(g)] / c for g, c in zip(ids, counts, strict=True)}
    return np.array([per_case[int(g)] for g in groups], dtype=float)


class WeightedStreamSampler(Sampler[int]):
    """Weighted sampling with replacement that also works under DistributedDataParallel.

    Every rank draws the *same* stream of ``num_samples`` indices (same seed and epoch)
    and keeps every ``world_size``-th one starting at its rank, so together the ranks see
    exactly the stream a single process would, with no overlap. (PyTorch's
    ``WeightedRandomSampler`` has no distributed form and ``DistributedSampler`` does
    not weight.) Call :meth:`set_epoch` each epoch for a new stream.
    """

    def __init__(
        self,
        weights: Sequence[float],
        num_samples: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.weights = torch.as_tensor(np.asarray(weights, dtype=float), dtype=torch.double)
        if (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError("sampling weights must be non-negative with a positive sum")
        self.total = int(num_samples) - int(num_samples) % world_size  # equal share per rank
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def stream(self) -> torch.Tensor:
        """The full stream of this epoch (identical on every rank)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.multinomial(self.weights, self.total, replacement=True, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.stream()[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.total // self.world_size
