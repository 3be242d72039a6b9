"""The frozen classifier behind Parallel WaveNet's perceptual loss (arXiv:1711.10433, Sec. 3.2.2).

The paper trains a WaveNet-like phone recogniser on raw audio and compares the student's and the
real audio's feature maps through it. No corpus here has phone labels, so this classifier
recognises speakers (the labelled task the available speech supports; see
deepgen/data/speech.speaker_classification_examples): a stack of dilated non-causal 1-D
convolutions with ReLUs over the raw waveform, mean-pooled over time into speaker logits. Its
feature maps (one per layer) are what the style loss compares.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepgen.layers.causal_conv import CausalConv1D


class SpeakerClassifier(nn.Module):
    """audio_BxT in [-1, 1] -> (logits B x num_speakers, feature maps B x T x C per layer)."""

    num_speakers: int
    features: int = 32
    kernel_size: int = 3
    dilations: Sequence[int] = (1, 2, 4, 8, 16, 32)

    @nn.compact
    def __call__(self, audio_BxT: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        h = audio_BxT[..., None]
        feature_maps = []
        for i, dilation in enumerate(self.dilations):
            h = nn.relu(
                CausalConv1D(
                    self.features, self.kernel_size, dilation, causal=False, name=f"conv_{i}"
                )(h)
            )
            feature_maps.append(h)
        logits = nn.Dense(self.num_speakers, name="logits")(jnp.mean(h, axis=1))
        return logits, feature_maps
