"""Uniform / size-balanced sampling: group probabilities follow p_j = n_j^q / sum n_i^q."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_attention.training.sampling import (
    WeightedStreamSampler,
    group_ids,
    group_probabilities,
    sample_weights,
    size_bins,
)


def _toy_groups():
    # 3 groups of 60, 30 and 10 cases
    return np.array([0] * 60 + [1] * 30 + [2] * 10)


def test_size_bins_and_groups():
    bins = size_bins([0.001, 0.02, 0.05, 0.5], edges=(0.01, 0.03, 0.10))
    np.testing.assert_array_equal(bins, [0, 1, 2, 3])
    groups = group_ids([0, 0, 1, 1], [0, 3, 0, 3])
    assert len(set(groups.tolist())) == 4


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_group_probabilities_match_formula(q):
    groups = _toy_groups()
    counts = np.array([60, 30, 10], dtype=float)
    expected = counts**q / np.sum(counts**q)
    got = group_probabilities(groups, q)
    np.testing.assert_allclose([got[0], got[1], got[2]], expected)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_sampler_frequencies_match_formula(q):
    groups = _toy_groups()
    sampler = WeightedStreamSampler(sample_weights(groups, q), num_samples=60_000, seed=3)
    drawn = groups[np.fromiter(iter(sampler), dtype=int)]
    freq = np.bincount(drawn, minlength=3) / len(drawn)
    counts = np.array([60, 30, 10], dtype=float)
    np.testing.assert_allclose(freq, counts**q / np.sum(counts**q), atol=0.01)


def test_q_one_is_uniform_over_cases():
    weights = sample_weights(_toy_groups(), 1.0)
    np.testing.assert_allclose(weights, np.full(100, 0.01))


def test_distributed_ranks_split_one_stream_without_overlap():
    weights = sample_weights(_toy_groups(), 0.0)
    single = WeightedStreamSampler(weights, 101, seed=5)
    ranks = [WeightedStreamSampler(weights, 101, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(4)
    assert len(ranks[0]) == len(ranks[1]) == 50
    interleaved = np.empty(100, dtype=int)
    interleaved[0::2], interleaved[1::2] = list(ranks[0]), list(ranks[1])
    np.testing.assert_array_equal(interleaved, single.stream()[:100].numpy())


def test_new_epoch_gives_new_stream():
    sampler = WeightedStreamSampler(np.ones(50), 50, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_bad_sampler_arguments():
    with pytest.raises(ValueError):
        WeightedStreamSampler(np.zeros(4), 4)
    with pytest.raises(ValueError):
        WeightedStreamSampler(np.ones(4), 4, rank=2, world_size=2)
