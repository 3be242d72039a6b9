"""Episodes of T images for the Kanerva Machine: resumable training batches, held-out sets.

The Kanerva Machine (Wu et al., arXiv:1804.01756) trains on episodes X = x_{1:T}: each episode is
written to a fresh memory and read back, so a training batch is B episodes of T images. The
paper's episodes are T = 32 images drawn at random from the training set [recalled]; here:

* `training_episodes`: epoch e is a permutation of the split's images drawn from (seed, e), cut
  in order into episodes of T consecutive images; batch b of the epoch is the b-th run of B
  episodes (B * T images) of that permutation, so the episodes of an epoch are disjoint and the
  last incomplete batch is dropped (an epoch covers floor(N / (B T)) * B T images; with B = 1 all
  floor(N / T) * T). It is a `deepgen.data.pipeline.EpochIterator` over the images with a global
  batch of B * T, so its whole state is (epoch, batch) and it resumes exactly. Grey images are
  binarised afresh each time they are seen (x ~ Bernoulli(intensity), `mnist.binarize`'s rule)
  with the batch's generator, drawn for the whole global batch; each process keeps its episodes.
  Colour images (binary=False: float N x H x W x C, e.g. CIFAR-10 as bin centres on [-1, 1]) are
  used as they are.
* `heldout_episodes`: the eval split's images in one fixed permutation (seeded by the config's
  seed), cut into floor(N / T) episodes; `binarise_episodes` binarises them with a fixed
  generator per repeat, so every eval of a run sees the same episodes.

classes_per_episode = n > 0 builds episodes with redundancy instead: each holds T / n images of
each of n distinct classes (labels), in a shuffled order. Training draws the n classes uniformly
and T / n images of each without replacement, per episode, from the batch's generator (so an
"epoch" is only a count of floor(N / (B T)) batches, and batches stay resumable); held out, each
class's images are permuted once and cut into chunks of T / n, and round j of the chunks (every
class's j-th chunk, classes in a fixed random order) is cut into episodes of n chunks, so held-out
episodes are fixed and disjoint. The paper's own episodes are random [recalled]; episodes from few
classes are a test of whether the memory stores what the episode shares ([ours]).
"""

from __future__ import annotations

import numpy as np

from deepgen.data.pipeline import EpochIterator

# Streams of np.random.default_rng([seed, STREAM, ...]) used here (distinct from the pipeline's
# [seed, epoch, batch], whose second entry is an epoch number: these are far above any epoch).
HELDOUT_ORDER_STREAM = 1_000_003
HELDOUT_BINARISE_STREAM = 1_000_033


def _binarise(intensities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x ~ Bernoulli(intensity) per pixel as float32 {0, 1}, with a trailing channel axis."""
    uniform = rng.random(intensities.shape, dtype=np.float32)
    return (uniform < intensities).astype(np.float32)[..., None]


def _images_by_class(
    labels_N: np.ndarray | None, *, episode_length: int, classes_per_episode: int
) -> list[np.ndarray]:
    """The image indices of every class with at least T / n images (n = classes_per_episode)."""
    if labels_N is None:
        raise ValueError("classes_per_episode > 0 needs labels_N")
    T, n = int(episode_length), int(classes_per_episode)
    if T % n:
        raise ValueError(f"classes_per_episode={n} must divide episode_length={T}")
    labels_N = np.asarray(labels_N)
    if labels_N.size and labels_N.min() < 0:
        raise ValueError("classes_per_episode > 0 needs labelled images; this split has none")
    members = [np.flatnonzero(labels_N == c) for c in np.unique(labels_N)]
    members = [m for m in members if len(m) >= T // n]
    if len(members) < n:
        raise ValueError(
            f"classes_per_episode={n} needs {n} classes with at least {T // n} images each; "
            f"the split has {len(members)}"
        )
    return members


def _class_episodes(
    members: list[np.ndarray], *, episodes: int, episode_length: int, classes_per_episode: int, rng
) -> np.ndarray:
    """E x T image indices: per episode n distinct classes, T / n distinct images of each, shuffled."""
    n = int(classes_per_episode)
    per_class = int(episode_length) // n
    index_ExT = np.empty((episodes, episode_length), np.int64)
    for e in range(episodes):
        classes = rng.choice(len(members), n, replace=False)
        chosen = np.concatenate([rng.choice(members[c], per_class, replace=False) for c in classes])
        index_ExT[e] = rng.permutation(chosen)
    return index_ExT


def training_episodes(
    images: np.ndarray,
    *,
    episode_length: int,
    episodes_per_batch: int,
    seed: int,
    process_rows: slice,
    binary: bool = True,
    labels_N: np.ndarray | None = None,
    classes_per_episode: int = 0,
) -> EpochIterator:
    """A resumable iterator of {"x": episodes_BxTxHxWxC} (this process's rows of B episodes).

    images: grey values in [0, 1], N x H x W, binarised per batch (binary=True, C = 1); or images
    N x H x W x C used as they are (binary=False). process_rows: this process's episodes of the
    global batch of episodes_per_batch (`distributed.process_slice(episodes_per_batch)`).
    classes_per_episode > 0 (with labels_N): episodes of T / n images from each of n classes.
    """
    T, B = int(episode_length), int(episodes_per_batch)
    if T < 1 or B < 1:
        raise ValueError(f"need episode_length >= 1 and episodes_per_batch >= 1, got {T}, {B}")
    num = len(images)
    if num < B * T:
        raise ValueError(
            f"a batch of {B} episodes of {T} images needs {B * T} images; the split has {num}"
        )
    members = None
    if classes_per_episode:
        members = _images_by_class(
            labels_N, episode_length=T, classes_per_episode=classes_per_episode
        )

    def make_batch(indices: np.ndarray, rows: slice, rng: np.random.Generator) -> dict:
        # Draw for the whole global batch, keep this process's episodes.
        if members is not None:  # the epoch's permutation is not used: episodes by class
            indices = _class_episodes(
                members,
                episodes=B,
                episode_length=T,
                classes_per_episode=classes_per_episode,
                rng=rng,
            ).reshape(-1)
        x = _binarise(images[indices], rng) if binary else np.asarray(images[indices], np.float32)
        return {"x": x.reshape(B, T, *x.shape[1:])[rows]}

    return EpochIterator(
        num_examples=num,
        global_batch_size=B * T,
        make_batch=make_batch,
        seed=int(seed),
        process_rows=process_rows,
    )


def heldout_order(
    num_images: int,
    *,
    episode_length: int,
    seed: int,
    labels_N: np.ndarray | None = None,
    classes_per_episode: int = 0,
) -> np.ndarray:
    """Image indices of the held-out episodes, E x T: a fixed permutation cut into E = floor(N / T)
    episodes; or, classes_per_episode = n > 0, fixed disjoint episodes of n classes (module doc)."""
    T = int(episode_length)
    rng = np.random.default_rng([int(seed), HELDOUT_ORDER_STREAM])
    if classes_per_episode:
        n = int(classes_per_episode)
        members = _images_by_class(labels_N, episode_length=T, classes_per_episode=n)
        chunks = [rng.permutation(m)[: len(m) // (T // n) * (T // n)] for m in members]
        chunks = [c.reshape(-1, T // n) for c in chunks]
        episodes = []
        for j in range(max(len(c) for c in chunks)):
            round_j = [c[j] for c in chunks if len(c) > j]
            round_j = [round_j[i] for i in rng.permutation(len(round_j))]
            for e in range(len(round_j) // n):
                episodes.append(rng.permutation(np.concatenate(round_j[e * n : (e + 1) * n])))
        if not episodes:
            raise ValueError(f"no held-out episode of {n} classes x {T // n} images fits here")
        return np.stack(episodes)
    num_episodes = num_images // T
    if num_episodes < 1:
        raise ValueError(f"an episode of {T} images needs more images than the {num_images} here")
    order = rng.permutation(num_images)
    return order[: num_episodes * T].reshape(num_episodes, T)


def heldout_episodes(
    images: np.ndarray,
    *,
    episode_length: int,
    seed: int,
    labels_N: np.ndarray | None = None,
    classes_per_episode: int = 0,
) -> np.ndarray:
    """The held-out episodes' images, E x T x ... (binarise grey values with binarise_episodes)."""
    index_ExT = heldout_order(
        len(images),
        episode_length=episode_length,
        seed=seed,
        labels_N=labels_N,
        classes_per_episode=classes_per_episode,
    )
    return np.asarray(images)[index_ExT]


def binarise_episodes(intensities_ExTxHxW: np.ndarray, *, seed: int, repeat: int) -> np.ndarray:
    """One fixed binarisation (per seed and repeat) of held-out episodes: E x T x H x W x 1."""
    rng = np.random.default_rng([int(seed), HELDOUT_BINARISE_STREAM, int(repeat)])
    return _binarise(intensities_ExTxHxW, rng)
