"""Checks the data-loader tests share: one-line errors, row sets and mocked TFDS set-ups."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from deepgen.core.errors import DataError
from deepgen.data import sources


def assert_one_line_error(error: Exception, *fragments: str) -> None:
    """The message is one line and mentions every fragment."""
    message = str(error)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def row_set(images: np.ndarray) -> set[bytes]:
    """Each image as bytes, for disjointness checks."""
    return {image.tobytes() for image in images}


def pretend_prepared_tfds(monkeypatch: pytest.MonkeyPatch) -> None:
    """tfds mocks keep is_prepared() False; skip that check and describe the mock instead."""
    monkeypatch.setattr(
        sources,
        "describe_prepared_tfds",
        lambda name, data_dir, alternative="": f"{name}:mock in {data_dir}",
    )


def tfds_read_failure(monkeypatch: pytest.MonkeyPatch, load: Callable[[], object]) -> DataError:
    """The DataError of load() when a prepared TFDS dataset cannot be read at random."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pretend_prepared_tfds(monkeypatch)

    def unsupported_format(builder, split, **unused_kwargs):
        raise NotImplementedError("Random access for TFRECORD is not supported.\n\t* details")

    with (
        tfds.testing.mock_data(as_data_source_fn=unsupported_format),
        pytest.raises(DataError) as caught,
    ):
        load()
    return caught.value


def unprepared_tfds_error(dataset_dir: Path, load: Callable[[], object]) -> DataError:
    """The DataError of load() when data.dir holds the dataset's folder but nothing prepared."""
    pytest.importorskip("tensorflow_datasets")
    dataset_dir.mkdir()
    with pytest.raises(DataError) as caught:
        load()
    return caught.value
