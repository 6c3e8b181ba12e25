"""A user's own images: accepted in the forms documented, refused with what was expected."""

import numpy as np
import pytest

import vaelab
from vaelab.cli import main
from vaelab.data import as_images, load
from vaelab.errors import DataError


@pytest.mark.parametrize(
    "array,expected_first",
    [
        (np.full((2, 4, 4), 255, np.uint8), 255),
        (np.full((2, 1, 4, 4), 0.5), 128),
        (np.ones((2, 4, 4), bool), 255),
        (np.full((2, 4, 4), 17, np.int16), 17),
    ],
)
def test_accepted_forms_become_uint8_with_a_channel(array, expected_first):
    images = as_images(array)
    assert images.shape == (2, 1, 4, 4) and images.dtype == np.uint8 and images[0, 0, 0, 0] == expected_first


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros((10, 784)), r"images must be \(N, H, W\) or \(N, 1, H, W\), got shape \(10, 784\)"),
        (np.zeros((2, 3, 4, 4)), r"images must be \(N, H, W\) or \(N, 1, H, W\), got shape \(2, 3, 4, 4\)"),
        (np.zeros((0, 4, 4)), r"holds no images \(shape \(0, 4, 4\)\)"),
        (np.zeros((2, 0, 4)), r"images must be \(N, H, W\) or \(N, 1, H, W\), got shape \(2, 0, 4\)"),
        (np.full((2, 4, 4), 255.0), r"float pixels must be in \[0, 1\], got values in \[255, 255\]"),
        (np.full((2, 4, 4), np.nan), r"float pixels must be in \[0, 1\], got no numbers and NaN"),
        (np.full((2, 4, 4), 300), r"integer pixels must be in 0-255, got values in \[300, 300\]"),
        (
            np.full((2, 4, 4), "a"),
            r"pixels must be uint8, integers in 0-255, booleans or floats in \[0, 1\], got <U1",
        ),
    ],
)
def test_refused_forms_say_what_was_expected(array, message):
    with pytest.raises(DataError, match=r"^my array: " + message):
        as_images(array, "my array")


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_train_on_an_npz_of_ones_own_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    name = _npz(
        tmp_path / "mine.npz",
        train_images=rng.random((200, 8, 8)),
        test_images=rng.random((50, 8, 8)),
        train_labels=rng.integers(0, 3, 200),
    )
    images, labels = load(name, "train")
    assert images.shape == (200, 1, 8, 8) and labels.max() <= 2
    run = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        name,
        "--z-dim",
        "2",
        "--hidden",
        "16",
        "--batch-size",
        "50",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(run),
    ]
    assert main(args) == 0
    assert vaelab.load_run(run).model.x_dim == 64 and (run / "report.html").exists()


@pytest.mark.parametrize(
    "arrays,message",
    [
        (
            {"train_images": np.zeros((4, 8, 8), np.uint8)},
            r"missing array 'test_images' \(has train_images\)",
        ),
        (
            {"train_images": np.zeros((4, 8, 8)), "test_images": np.zeros((4, 8))},
            r"test_images: images must be",
        ),
        ({"train_images": np.zeros((4, 8, 8)), "test_images": np.zeros((4, 6, 6))}, r"differ in size"),
        (
            {
                "train_images": np.zeros((4, 8, 8)),
                "test_images": np.zeros((2, 8, 8)),
                "test_labels": np.zeros(3, int),
            },
            r"test_labels must be 2 integers",
        ),
    ],
)
def test_a_bad_npz_names_the_file_and_the_array(tmp_path, capsys, arrays, message):
    name = _npz(tmp_path / "bad.npz", **arrays)
    args = ["train", "--dataset", name, "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bad.npz'}" in err and err.count("\n") == 1
    with pytest.raises(DataError, match=message):
        load(name, "train")


def test_a_missing_npz_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.npz: no such file"):
        load(f"npz:{tmp_path / 'nowhere.npz'}", "train")


def test_an_output_folder_that_cannot_be_made_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["train", "--dataset", "digits", "--device", "cpu", "--no-progress", "--out", str(blocker / "run")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{blocker / 'run'}: cannot write the run directory" in err
    assert "epoch" not in capsys.readouterr().out
