"""Where a dataset's examples come from: the choice between embedded, file and TFDS sources.

A dataset declares its sources once and writes only its own parsing::

    CORPUS = DatasetSources(
        title="corpus",
        splits=("train", "test"),
        sources={
            "embedded": embedded_source(_load_embedded, "the embedded sample"),
            "file": Source(_load_file, "corpus.txt", found_in=_has_corpus_file),
            "tfds": tfds_source("corpus", _load_tfds),
        },
    )

    def load_corpus(split, *, data_dir=None, source="auto"):
        return sources.load(CORPUS, split, data_dir=data_dir, source=source)

:func:`load` checks ``split`` and ``source`` (a one-line ConfigError naming the field and the
allowed values), treats an empty ``data_dir`` as none, and resolves ``source="auto"``: without a
data_dir the ``default`` source (the embedded copy), with one the first source, in declaration
order, whose ``found_in(data_dir)`` is true. It then checks data_dir as the chosen source needs
and calls its loader with ``(split, data_dir)``. Nothing here downloads.

Also the TFDS helpers every dataset shares: :func:`load_tfds_split` reads (part of) a split of a
dataset prepared in array_record format through ``tfds.data_source``, importing
tensorflow_datasets only then, and turns every failure into a one-line DataError that says how
to prepare the dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from deepgen.core.errors import ConfigError, DataError

# A source's loader: (split, data_dir) -> the dataset's split object. data_dir is None only for
# sources that do not need one.
Loader = Callable[[str, str | None], Any]

# How a source uses data.dir:
#   "required": data.dir must be set (else ConfigError) and be an existing directory;
#   "optional": may be unset (e.g. TFDS's default data_dir), must exist when set;
#   "ignored":  never read (the embedded copy);
#   "created":  must be set, and the loader creates it (a downloader).
DATA_DIR_USES = ("required", "optional", "ignored", "created")

AUTO = "auto"


def check_choice(option: str, value: Any, allowed: Sequence[str]) -> None:
    """Raises a one-line ConfigError naming option and the allowed values unless value is one."""
    if value not in allowed:
        raise ConfigError(
            f"{option}={value!r} is not supported; use one of {', '.join(map(repr, allowed))}"
        )


def first_line(err: BaseException) -> str:
    """The first line of an exception's message ('' when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def file_digest(path: str, algorithm: str) -> str:
    """The hex digest ('md5', 'sha256', ...) of a file, read in chunks: for checksummed files."""
    with open(path, "rb") as data_file:
        return hashlib.file_digest(data_file, algorithm).hexdigest()


# ----------------------------------------------------------------------------------------------
# Downloads and zip members (text8, enwik8: files from mattmahoney.net)
# ----------------------------------------------------------------------------------------------

DOWNLOAD_TIMEOUT_S = 60.0
_DOWNLOAD_CHUNK_BYTES = 1 << 20


def writable_dir(data_dir: str | os.PathLike) -> str:
    """data_dir, created if needed; a one-line DataError when it cannot be."""
    data_dir = os.fspath(data_dir)
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"data.dir={data_dir} cannot be created ({type(err).__name__}: {err}); "
            "choose a writable folder"
        ) from err
    return data_dir


def remove_quietly(path: str) -> None:
    """Removes path if it exists; errors are ignored (clean-up after a failure)."""
    with contextlib.suppress(OSError):
        os.remove(path)


def download(url: str, path: str, manual_hint: str) -> tuple[int, str]:
    """Streams url to path + '.part', renamed to path when complete: (bytes, sha256 hex).

    An unreachable server (DOWNLOAD_TIMEOUT_S socket timeout) or a failed write leaves nothing
    behind and raises a one-line DataError ending with manual_hint (what to do by hand).
    """
    partial_path = path + ".part"
    digest, num_bytes = hashlib.sha256(), 0
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
            open(partial_path, "wb") as out_file,
        ):
            for chunk in iter(lambda: response.read(_DOWNLOAD_CHUNK_BYTES), b""):
                digest.update(chunk)
                out_file.write(chunk)
                num_bytes += len(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        remove_quietly(partial_path)
        reason = getattr(err, "reason", err)
        raise DataError(
            f"could not download {url} ({type(err).__name__}: {reason}); {manual_hint}"
        ) from err
    os.replace(partial_path, path)
    return num_bytes, digest.hexdigest()


def zip_member(archive: zipfile.ZipFile, path: str, name: str, url: str) -> str:
    """The member of archive named name, else its only file; else a one-line DataError."""
    names = [info.filename for info in archive.infolist() if not info.is_dir()]
    if name in names:
        return name
    if len(names) == 1:
        return names[0]
    raise DataError(
        f"zip file {path} has no member named {name} (members: "
        f"{', '.join(names[:5]) or 'none'}); use the {os.path.basename(url)} from {url}"
    )


def require_existing_dir(data_dir: str, holds: str, fallback: str = "") -> None:
    """Raises a one-line DataError unless data_dir is an existing directory.

    holds says what the folder should contain; fallback, when given, what an empty data.dir
    gives instead (e.g. "the embedded digits").
    """
    if not os.path.exists(data_dir):
        instead = f", or leave data.dir empty to use {fallback}" if fallback else ""
        raise DataError(
            f"data.dir={data_dir} does not exist; create it with {holds} inside{instead}"
        )
    if not os.path.isdir(data_dir):
        raise DataError(
            f"data.dir={data_dir} is a file, not a directory; point data.dir at the folder that "
            f"holds {holds}"
        )


@dataclasses.dataclass(frozen=True)
class Source:
    """One way to get a dataset: its loader, what it reads, and how auto detects it.

    what: what the source reads, for messages ("MNIST IDX files (...)", "the embedded digits").
    found_in: data_dir -> whether the source's files are there; sources without one are picked
      by auto only as the default.
    data_dir: how the source uses data.dir, one of DATA_DIR_USES.
    """

    load: Loader
    what: str
    found_in: Callable[[str], bool] | None = None
    data_dir: str = "required"

    def __post_init__(self) -> None:
        if self.data_dir not in DATA_DIR_USES:
            raise ValueError(f"data_dir={self.data_dir!r} is not one of {DATA_DIR_USES}")


@dataclasses.dataclass(frozen=True)
class DatasetSources:
    """A dataset's splits and its sources by name, in auto-detection order.

    title: the dataset's name in messages ("MNIST", "CIFAR-10").
    default: the source auto uses when data.dir is empty (None: data.dir is needed).
    """

    title: str
    splits: tuple[str, ...]
    sources: Mapping[str, Source]
    default: str | None = "embedded"

    def __post_init__(self) -> None:
        if AUTO in self.sources:
            raise ValueError(f"{self.title}: {AUTO!r} is not a source name; load resolves it")
        if self.default is not None and self.default not in self.sources:
            raise ValueError(f"{self.title}: default {self.default!r} is not one of its sources")

    @property
    def choices(self) -> tuple[str, ...]:
        """The allowed values of source: 'auto' and every source name."""
        return (AUTO, *self.sources)

    @property
    def holds(self) -> str:
        """What a data.dir for this dataset holds: the files of each detectable source."""
        found = [source.what for source in self.sources.values() if source.found_in is not None]
        return " or ".join(found) or "the dataset's files"

    @property
    def fallback(self) -> str:
        """What an empty data.dir gives ('' when it gives nothing)."""
        return self.sources[self.default].what if self.default is not None else ""

    def require_dir(self, data_dir: str) -> None:
        """DataError unless data_dir is an existing directory, saying what belongs in it."""
        require_existing_dir(data_dir, self.holds, self.fallback)

    def detect(self, data_dir: str | None) -> str:
        """The source auto picks: the default without data_dir, else the first one found in it."""
        if data_dir is None:
            if self.default is None:
                raise DataError(
                    f"{self.title} has no embedded copy; set data.dir to a folder with {self.holds}"
                )
            return self.default
        self.require_dir(data_dir)
        for name, source in self.sources.items():
            if source.found_in is not None and source.found_in(data_dir):
                return name
        instead = f", or leave data.dir empty to use {self.fallback}" if self.fallback else ""
        raise DataError(
            f"data.dir={data_dir} has no usable {self.title} data: expected {self.holds}; put "
            f"it there or fix data.dir{instead}"
        )


def load(
    dataset: DatasetSources,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = AUTO,
) -> Any:
    """One split of dataset from the named source, or the one auto picks (see the module doc)."""
    check_choice("split", split, dataset.splits)
    check_choice("source", source, dataset.choices)
    data_dir = os.fspath(data_dir) if data_dir else None
    if source == AUTO:
        source = dataset.detect(data_dir)
    chosen = dataset.sources[source]
    if chosen.data_dir == "ignored":
        return chosen.load(split, None)
    if data_dir is None and chosen.data_dir in ("required", "created"):
        raise ConfigError(
            f"source={source!r} needs data.dir set to a folder with {chosen.what}; set data.dir "
            "or use source='auto'"
        )
    if data_dir is not None and chosen.data_dir != "created":
        dataset.require_dir(data_dir)
    return chosen.load(split, data_dir)


def embedded_source(load: Callable[[str], Any], what: str) -> Source:
    """The copy that ships in an installed package: load(split), no data.dir, never detected."""
    return Source(lambda split, _: load(split), what, data_dir="ignored")


# ----------------------------------------------------------------------------------------------
# TFDS (array_record data_source)
# ----------------------------------------------------------------------------------------------


def tfds_build_hint(name: str, data_dir: str | None, alternative: str = "") -> str:
    """The command that prepares the dataset where the loader looks for it (plus an alternative)."""
    hint = (
        f"prepare it with `tfds build {name} --data_dir={data_dir or 'DIR'} "
        "--file_format=array_record` on a machine with TensorFlow and copy it over"
    )
    return f"{hint}, or {alternative}" if alternative else hint


def tfds_source(name: str, load: Loader) -> Source:
    """The source of a TFDS dataset NAME: found as data_dir/NAME/, data.dir optional."""
    return Source(
        load,
        f"a TFDS dataset {name}/<version>/ made by `tfds build {name} --file_format=array_record`",
        found_in=lambda data_dir: os.path.isdir(os.path.join(data_dir, name)),
        data_dir="optional",
    )


def describe_prepared_tfds(name: str, data_dir: str | None, alternative: str = "") -> str:
    """'NAME:VERSION in DIR' for a prepared dataset, else DataError (tfds's own is misleading)."""
    import tensorflow_datasets as tfds

    where = data_dir or "the default TFDS data_dir"
    hint = tfds_build_hint(name, data_dir, alternative)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        is_prepared = bool(builder.is_prepared())
    except Exception as err:  # any failure here means the dataset is not usable as is
        raise DataError(
            f"TFDS dataset {name} in {where} could not be opened ({type(err).__name__}: "
            f"{first_line(err)}); {hint}"
        ) from err
    if not is_prepared:
        raise DataError(
            f"TFDS dataset {name} is not prepared in {where} (looked for {builder.data_dir}); "
            f"{hint}"
        )
    return f"{name}:{builder.version} in {where}"


def read_tfds_examples(data_source: Any, indices: Iterable[int]) -> list[dict[str, Any]]:
    """Reads examples by index, in one batch when the data source supports it."""
    index_list = [int(i) for i in indices]
    get_items = getattr(data_source, "__getitems__", None)
    if get_items is not None:
        try:
            return list(get_items(index_list))
        except TypeError:
            pass  # sources without a working batch read (e.g. tfds test mocks) fall through
    return [data_source[i] for i in index_list]


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """Examples read from a TFDS split, and what to say when they are not as expected."""

    examples: list[dict[str, Any]]
    description: str  # 'NAME:VERSION in DIR'
    tfds_split: str
    num_source: int  # examples in the whole TFDS split, before any selection
    hint: str

    def error(self, problem: str) -> DataError:
        """A one-line DataError: 'TFDS NAME:VERSION in DIR split S <problem>; <how to fix>'."""
        return DataError(f"TFDS {self.description} split {self.tfds_split} {problem}; {self.hint}")

    def feature(self, key: str, dtype: Any = None) -> np.ndarray:
        """The feature `key` of every example, stacked along a new first axis."""
        try:
            return np.stack([np.asarray(example[key], dtype=dtype) for example in self.examples])
        except (KeyError, TypeError, ValueError) as err:
            raise self.error(
                f"has no usable {key!r} feature ({type(err).__name__}: {first_line(err)})"
            ) from err


def load_tfds_split(
    name: str,
    split: str,
    data_dir: str | None,
    *,
    select: Callable[[int, str], Iterable[int]] | None = None,
    alternative: str = "",
) -> TfdsSplit:
    """Reads a split of a prepared array_record TFDS dataset, never downloading.

    select(num_examples, where) picks the example indices (all by default); `where` names the
    split for its error messages. Every failure is a one-line DataError with the build command
    (and `alternative`, another way to get the data, when given).
    """
    import tensorflow_datasets as tfds

    description = describe_prepared_tfds(name, data_dir, alternative)
    hint = tfds_build_hint(name, data_dir, alternative)
    where = f"TFDS {description} split {split}"
    try:
        data_source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        num_source = len(data_source)
        indices = range(num_source) if select is None else select(num_source, where)
        examples = read_tfds_examples(data_source, indices)
    except DataError:
        raise
    except Exception as err:  # tfds raises ValueError/NotImplementedError/OSError for bad layouts
        raise DataError(
            f"{where} could not be read ({type(err).__name__}: {first_line(err)}); {hint}"
        ) from err
    read = TfdsSplit(examples, description, split, num_source, hint)
    if not examples:
        raise read.error("has no examples")
    return read
