"""deepgen.data.babi: parsing the bAbI v1.2 task files, finding them, vocabulary and arrays.

No bAbI copy is shipped: :func:`write_babi` writes the 40 task files in the real format with tiny
stories (the curriculum and SAM tests reuse it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from deepgen.core.errors import ConfigError, DataError
from deepgen.data import babi

QA1_TRAIN = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Where is Daniel? \thallway\t4
1 Sandra journeyed to the garden.
2 Where is Sandra? \tgarden\t1
"""
QA19_TRAIN = """1 The kitchen is north of the hallway.
2 The garden is south of the kitchen.
3 How do you go from the hallway to the garden?\tn,s\t1 2
"""
OTHER_STORY = """1 The cat is {color}.
2 Is the cat {color}?\t{answer}\t1
"""
DANIEL_TOKENS = [
    "mary",
    "moved",
    "to",
    "the",
    "bathroom",
    ".",
    "john",
    "went",
    "to",
    "the",
    "hallway",
    ".",
    "daniel",
    "went",
    "back",
    "to",
    "the",
    "hallway",
    ".",
    "where",
    "is",
    "daniel",
    "?",
    "<answer>",
]
SANDRA_TOKENS = ["sandra", "journeyed", "to", "the", "garden", ".", "where", "is", "sandra", "?"]


def write_babi(folder: Path) -> Path:
    """All 40 task files in the standard names, with tiny stories in the real format."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, name in enumerate(babi.BABI_TASK_NAMES, start=1):
        for split in ("train", "test"):
            if number == 1 and split == "train":
                text = QA1_TRAIN
            elif number == 19:
                text = QA19_TRAIN
            else:
                color = "red" if split == "train" else "blue"
                text = OTHER_STORY.format(color=color, answer="yes" if number % 2 else "no")
            (folder / f"{name}_{split}.txt").write_text(text)
    return folder


def assert_one_line(error: BaseException, *fragments: str) -> None:
    """The message is one line and mentions every fragment."""
    message = str(error)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.fixture(scope="module")
def babi_dir(tmp_path_factory) -> Path:
    return write_babi(tmp_path_factory.mktemp("babi"))


@pytest.fixture(scope="module")
def babi_data(babi_dir) -> babi.BabiData:
    return babi.load_babi(str(babi_dir), max_tokens=32)


def decode_row(vocab: tuple[str, ...], ids) -> list[str]:
    return [vocab[i] for i in np.asarray(ids) if i != 0]


def test_tokenize_splits_punctuation_and_lowercases():
    assert babi.babi_tokenize("Where is Mary? ") == ["where", "is", "mary", "?"]
    assert babi.babi_tokenize("John went to the hallway.") == [
        "john",
        "went",
        "to",
        "the",
        "hallway",
        ".",
    ]


def test_parse_keeps_story_so_far_and_restarts_stories():
    examples = babi.parse_babi(QA1_TRAIN)
    assert len(examples) == 3
    # Question lines are not part of the story of later questions.
    assert list(examples[1].tokens) == DANIEL_TOKENS[:-1]
    assert examples[1].answer == "hallway" and examples[1].question_len == 4
    assert examples[0].tokens[-4:] == ("where", "is", "mary", "?")
    # Sentence number 1 starts a new story.
    assert list(examples[2].tokens) == SANDRA_TOKENS and examples[2].answer == "garden"
    # A several-word answer is one token.
    (path_example,) = babi.parse_babi(QA19_TRAIN)
    assert path_example.answer == "n,s" and path_example.question_len == 11


def test_parse_rejects_a_line_without_a_number():
    with pytest.raises(DataError) as caught:
        babi.parse_babi("1 Mary moved.\nMary went home.\n", path="qa1_x_train.txt")
    assert_one_line(caught.value, "qa1_x_train.txt line 2", "bAbI v1.2")


def test_vocab_and_arrays():
    examples = babi.parse_babi(QA1_TRAIN) + babi.parse_babi(QA19_TRAIN)
    vocab = babi.babi_vocab(examples)
    assert vocab[:2] == (babi.BABI_PAD, babi.BABI_ANSWER) and list(vocab[2:]) == sorted(vocab[2:])
    assert "n,s" in vocab and "bathroom" in vocab
    word_ids = {word: i for i, word in enumerate(vocab)}
    arrays = babi.babi_arrays([examples[:3], examples[3:]], word_ids, max_tokens=32)
    assert arrays["tokens"].shape == (4, 32) and arrays["tokens"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["counts"], [3, 1])
    np.testing.assert_array_equal(arrays["offsets"], [0, 3])
    np.testing.assert_array_equal(babi.babi_task_ids(arrays["counts"]), [0, 0, 0, 1])
    assert decode_row(vocab, arrays["tokens"][1]) == DANIEL_TOKENS
    assert arrays["lengths"][1] == len(DANIEL_TOKENS) and not arrays["tokens"][1, 24:].any()
    assert vocab[arrays["answers"][3]] == "n,s"


def test_truncation_keeps_last_tokens():
    examples = babi.parse_babi(QA1_TRAIN)
    vocab = babi.babi_vocab(examples)
    word_ids = {word: i for i, word in enumerate(vocab)}
    arrays = babi.babi_arrays([examples], word_ids, max_tokens=8)
    assert arrays["tokens"].shape == (3, 8)
    assert decode_row(vocab, arrays["tokens"][1]) == DANIEL_TOKENS[-8:]
    np.testing.assert_array_equal(arrays["lengths"], [8, 8, 8])
    assert decode_row(vocab, arrays["tokens"][0])[-4:] == ["is", "mary", "?", "<answer>"]


def test_load_babi_fields(babi_data, babi_dir):
    data = babi_data
    assert data.task_names == babi.BABI_TASK_NAMES and data.variant == "files directly in data.dir"
    assert data.vocab[:2] == ("<pad>", "<answer>") and data.answer_id == 1
    assert data.vocab_size == len(data.vocab) and data.max_tokens == 32
    train = data.arrays["train"]
    np.testing.assert_array_equal(train["counts"][:2], [3, 1])
    np.testing.assert_array_equal(train["offsets"][:3], [0, 3, 4])
    assert decode_row(data.vocab, train["tokens"][1]) == DANIEL_TOKENS
    assert decode_row(data.vocab, train["tokens"][2]) == [*SANDRA_TOKENS, "<answer>"]
    qa19 = train["offsets"][18]
    assert data.vocab[train["answers"][qa19]] == "n,s"
    # The vocabulary covers the test split too ("blue" is only in test stories).
    test = data.arrays["test"]
    assert data.vocab[test["tokens"][0, 3]] == "blue"
    assert "22 train and 20 test questions" in data.description
    # max_tokens=None keeps the longest example (qa19's: 16 story words, 11 question words and
    # ANSWER) whole.
    whole = babi.load_babi(str(babi_dir), max_tokens=None)
    assert whole.max_tokens == 28
    assert whole.arrays["train"]["lengths"][qa19] == 28
    # The longest question (qa19: 11 words) plus ANSWER must fit.
    with pytest.raises(ConfigError) as caught:
        babi.load_babi(str(babi_dir), max_tokens=11)
    assert_one_line(caught.value, "data.max_tokens=11", "12 tokens")


def test_missing_data(tmp_path, babi_dir):
    with pytest.raises(DataError) as caught:
        babi.load_babi(str(tmp_path / "absent"), max_tokens=32)
    assert_one_line(caught.value, "data.dir", "bAbI v1.2", "cannot be downloaded")
    with pytest.raises(DataError) as caught:
        babi.load_babi("", max_tokens=32)
    assert_one_line(caught.value, "data.dir")
    broken = shutil.copytree(babi_dir, tmp_path / "broken")
    (broken / "qa7_counting_test.txt").unlink()
    with pytest.raises(DataError) as caught:
        babi.load_babi(str(broken), max_tokens=32)
    assert_one_line(caught.value, "qa7_*_test.txt", str(broken))
    (broken / "qa7_counting_test.txt").write_text("")
    with pytest.raises(DataError) as caught:
        babi.load_babi(str(broken), max_tokens=32)
    assert_one_line(caught.value, "qa7_counting_test.txt has no questions")


def test_prefers_en_10k(tmp_path):
    write_babi(tmp_path / "en")
    write_babi(tmp_path / "en-10k")
    folder, files = babi.find_babi_files(str(tmp_path))
    assert folder == str(tmp_path / "en-10k") and len(files) == 20
    assert files["qa19_path-finding"]["test"].endswith("en-10k/qa19_path-finding_test.txt")
    assert babi.load_babi(str(tmp_path), max_tokens=32).variant == "en-10k"


def test_encode_babi():
    tokens_BxT = jnp.asarray([[3, 4, 1, 0], [5, 1, 0, 0]], jnp.int32)
    inputs, targets, mask = babi.encode_babi(
        tokens_BxT, jnp.asarray([3, 2]), jnp.asarray([6, 2]), vocab_size=7
    )
    expected_inputs = np.zeros((2, 4, 7), np.float32)
    for b, t, token in [(0, 0, 3), (0, 1, 4), (0, 2, 1), (1, 0, 5), (1, 1, 1)]:
        expected_inputs[b, t, token] = 1.0
    np.testing.assert_array_equal(inputs, expected_inputs)
    np.testing.assert_array_equal(targets, [[0, 0, 6, 0], [0, 2, 0, 0]])
    assert targets.dtype == jnp.int32
    np.testing.assert_array_equal(mask, [[0, 0, 1, 0], [0, 1, 0, 0]])
