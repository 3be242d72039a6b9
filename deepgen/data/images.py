"""The one split type of every image dataset: images, labels, and where they came from.

Each loader documents its own pixel format: MNIST gives float32 intensities in [0, 1] of shape
(N, H, W), CIFAR-10 gives uint8 pixels of shape (N, H, W, C). The shape-suffixed names
``intensities_NxHxW`` and ``images_NxHxWxC`` read the same array and exist only for the layout
they name, so a caller that asks for the wrong layout fails at once.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split of images: (N, H, W) grey-scale or (N, H, W, C) colour, int32 labels (N,).

    ``labels_N`` is -1 for unlabelled images. ``source`` says where the images came from (file,
    TFDS version or embedded copy, and which part of it this split is).
    """

    images: np.ndarray
    labels_N: np.ndarray
    split: str
    source: str

    def __post_init__(self) -> None:
        if self.images.ndim not in (3, 4):
            raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got {self.images.shape}")
        if self.labels_N.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels_N has shape {self.labels_N.shape}, expected ({self.images.shape[0]},)"
            )

    @property
    def num_examples(self) -> int:
        """Number of images in the split."""
        return int(self.images.shape[0])

    @property
    def intensities_NxHxW(self) -> np.ndarray:
        """Grey-scale images without a channel axis (MNIST: float32 intensities in [0, 1])."""
        return self._layout(3, "intensities_NxHxW")

    @property
    def images_NxHxWxC(self) -> np.ndarray:
        """Images with a channel axis (CIFAR-10: uint8 RGB pixels)."""
        return self._layout(4, "images_NxHxWxC")

    @property
    def description(self) -> str:
        """Where the images came from (the same text as ``source``)."""
        return self.source

    def _layout(self, ndim: int, name: str) -> np.ndarray:
        if self.images.ndim != ndim:
            raise AttributeError(
                f"{name} needs {ndim}-D images, but this {self.split} split holds images of "
                f"shape {self.images.shape}; read .images instead"
            )
        return self.images
