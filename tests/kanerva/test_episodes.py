"""Episodes for the Kanerva Machine: disjoint within an epoch, resumable, binary, fixed held-out."""

import numpy as np
import pytest

from deepgen.kanerva import episodes

SIDE = 6  # 36 pixels: enough bits to write an image's index into its pixels
N = 50


def indexed_images(num: int = N) -> np.ndarray:
    """Image i's pixels are the bits of i (intensities 0 or 1, so every binarisation is exact)."""
    bits = (np.arange(num)[:, None] >> np.arange(SIDE * SIDE)[None, :]) & 1
    return bits.reshape(num, SIDE, SIDE).astype(np.float32)


def decode(x_BxTxHxWx1: np.ndarray) -> np.ndarray:
    """The image indices of a batch of episodes made from indexed_images: B x T."""
    bits = x_BxTxHxWx1.reshape(*x_BxTxHxWx1.shape[:2], -1).astype(np.int64)
    return np.sum(bits << np.arange(SIDE * SIDE), axis=-1)


def iterator(B: int, T: int, rows: slice | None = None, images=None, **classes):
    return episodes.training_episodes(
        indexed_images() if images is None else images,
        episode_length=T,
        episodes_per_batch=B,
        seed=3,
        process_rows=slice(0, B) if rows is None else rows,
        **classes,
    )


@pytest.mark.parametrize("B, T", [(1, 4), (3, 4)])
def test_the_episodes_of_an_epoch_are_disjoint_and_cover_whole_batches(B, T):
    it = iterator(B, T)
    assert it.batches_per_epoch == N // (B * T)
    for _ in range(2):  # two epochs, each a different permutation
        seen = np.concatenate([decode(next(it)["x"]).ravel() for _ in range(it.batches_per_epoch)])
        assert len(seen) == len(set(seen.tolist())) == it.batches_per_epoch * B * T
        assert seen.min() >= 0 and seen.max() < N
    if B == 1:
        assert it.batches_per_epoch * T == (N // T) * T  # every whole episode of the split


def test_epochs_draw_fresh_episodes():
    it = iterator(1, 4)
    first = [tuple(decode(next(it)["x"])[0]) for _ in range(it.batches_per_epoch)]
    second = [tuple(decode(next(it)["x"])[0]) for _ in range(it.batches_per_epoch)]
    assert set(first) != set(second)


def test_resuming_from_the_state_gives_the_same_next_batches():
    grey = np.full((N, SIDE, SIDE), 0.5, np.float32)
    it = iterator(2, 4, images=grey)
    for _ in range(7):  # past the end of the first epoch (6 batches)
        next(it)
    state = it.get_state()
    expected = [next(it)["x"] for _ in range(3)]
    resumed = iterator(2, 4, images=grey)
    resumed.set_state(state)
    for x in expected:
        np.testing.assert_array_equal(next(resumed)["x"], x)


def test_batches_are_binary_episodes_of_the_right_shape_binarised_afresh():
    grey = np.full((N, SIDE, SIDE), 0.5, np.float32)
    it = iterator(3, 4, images=grey)
    x = next(it)["x"]
    assert x.shape == (3, 4, SIDE, SIDE, 1) and x.dtype == np.float32
    assert set(np.unique(x).tolist()) == {0.0, 1.0}
    assert 0.4 < x.mean() < 0.6
    later = [next(it)["x"] for _ in range(it.batches_per_epoch)]  # the next epoch's first batch
    assert not np.array_equal(later[-1], x)


def test_processes_keep_their_episodes_of_the_same_global_batch():
    grey = np.full((N, SIDE, SIDE), 0.5, np.float32)
    whole = next(iterator(2, 4, images=grey))["x"]
    parts = [next(iterator(2, 4, rows=slice(i, i + 1), images=grey))["x"] for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_a_batch_larger_than_the_split_is_refused():
    with pytest.raises(ValueError, match="needs 52 images"):
        iterator(13, 4)


def test_heldout_episodes_are_fixed_disjoint_and_binarised_per_repeat():
    images = indexed_images()
    T = 8
    held = episodes.heldout_episodes(images, episode_length=T, seed=0)
    assert held.shape == (N // T, T, SIDE, SIDE)
    np.testing.assert_array_equal(held, episodes.heldout_episodes(images, episode_length=T, seed=0))
    assert not np.array_equal(held, episodes.heldout_episodes(images, episode_length=T, seed=1))
    index = decode(held[..., None]).ravel()
    assert len(set(index.tolist())) == (N // T) * T
    grey = np.full((5, T, SIDE, SIDE), 0.5, np.float32)
    x0 = episodes.binarise_episodes(grey, seed=0, repeat=0)
    assert x0.shape == (5, T, SIDE, SIDE, 1) and set(np.unique(x0).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(x0, episodes.binarise_episodes(grey, seed=0, repeat=0))
    assert not np.array_equal(x0, episodes.binarise_episodes(grey, seed=0, repeat=1))
    # A prefix of the episodes gets the same binarisation as in the whole set (quick evals).
    np.testing.assert_array_equal(x0[:2], episodes.binarise_episodes(grey[:2], seed=0, repeat=0))


LABELS = np.arange(N) // 5  # 10 classes of 5 images, then:
LABELS[-3:] = 10  # classes 9 (2 images) and 10 (3 images) are too small for 4 images per class


def class_iterator(B: int, T: int, n: int, rows: slice | None = None):
    return iterator(B, T, rows, labels_N=LABELS, classes_per_episode=n)


def test_class_episodes_hold_t_over_n_distinct_images_of_each_of_n_classes_and_resume():
    B, T, n = 3, 8, 2
    it = class_iterator(B, T, n)
    seen_classes = set()
    for _ in range(5):
        index_BxT = decode(next(it)["x"])
        for episode in index_BxT:
            assert len(set(episode.tolist())) == T  # no image twice in an episode
            classes, counts = np.unique(LABELS[episode], return_counts=True)
            assert len(classes) == n and set(counts.tolist()) == {T // n}
            assert not {9, 10} & set(classes.tolist())  # classes under T / n images: never drawn
            seen_classes.update(classes.tolist())
        assert not np.all(LABELS[index_BxT[:, :-1]] == LABELS[index_BxT[:, 1:]])  # shuffled
    assert len(seen_classes) > n
    state = it.get_state()
    expected = [next(it)["x"] for _ in range(3)]
    resumed = class_iterator(B, T, n)
    resumed.set_state(state)
    for x in expected:
        np.testing.assert_array_equal(next(resumed)["x"], x)
    whole = next(class_iterator(2, T, n))["x"]
    parts = [next(class_iterator(2, T, n, rows=slice(i, i + 1)))["x"] for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_heldout_class_episodes_are_fixed_disjoint_and_hold_n_classes():
    T, n = 8, 2
    order = episodes.heldout_order(
        N, episode_length=T, seed=0, labels_N=LABELS, classes_per_episode=n
    )
    # One chunk of 4 from each of the 9 classes with 5 images, 2 chunks per episode, one left over.
    assert order.shape == (4, T)
    assert len(set(order.ravel().tolist())) == order.size
    for episode in order:
        classes, counts = np.unique(LABELS[episode], return_counts=True)
        assert len(classes) == n and set(counts.tolist()) == {T // n}
    again = episodes.heldout_order(
        N, episode_length=T, seed=0, labels_N=LABELS, classes_per_episode=n
    )
    np.testing.assert_array_equal(order, again)
    other = episodes.heldout_order(
        N, episode_length=T, seed=1, labels_N=LABELS, classes_per_episode=n
    )
    assert not np.array_equal(order, other)
    # The random episodes of classes_per_episode=0 are the ones they always were.
    np.testing.assert_array_equal(
        episodes.heldout_order(N, episode_length=T, seed=0, labels_N=LABELS),
        episodes.heldout_order(N, episode_length=T, seed=0),
    )


@pytest.mark.parametrize(
    "labels, n, match",
    [
        (LABELS, 3, "must divide"),
        (np.full(N, -1), 2, "needs labelled images"),
        (np.zeros(N, np.int64), 2, "needs 2 classes"),
    ],
)
def test_class_episodes_that_cannot_be_built_are_refused(labels, n, match):
    with pytest.raises(ValueError, match=match):
        episodes.training_episodes(
            indexed_images(),
            episode_length=8,
            episodes_per_batch=1,
            seed=0,
            process_rows=slice(0, 1),
            labels_N=labels,
            classes_per_episode=n,
        )
