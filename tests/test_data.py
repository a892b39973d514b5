import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lipbench import data
from lipbench.datasets import cifar, fashion_mnist
from lipbench.download import Archive
from lipbench.errors import UserError


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_idx_files_from_data_dir(tmp_path, compress):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (12, 28, 28)), "y_train": rng.integers(0, 10, 12),
              "x_test": rng.integers(0, 256, (5, 28, 28)), "y_test": rng.integers(0, 10, 5)}
    for key, stem in fashion_mnist.IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[key], compress)
    loaded = data.load_dataset("fashion-mnist", str(tmp_path))
    assert loaded.x_train.shape == (12, 1, 28, 28) and loaded.in_shape == (1, 28, 28)
    assert np.allclose(loaded.x_test.numpy()[:, 0] * 255, arrays["x_test"])
    assert loaded.y_train.tolist() == arrays["y_train"].tolist()


def test_truncated_idx_is_reported(tmp_path):
    write_idx(tmp_path / "bad", np.zeros((4, 3, 3)), compress=False)
    (tmp_path / "bad").write_bytes((tmp_path / "bad").read_bytes()[:-5])
    with pytest.raises(UserError, match="truncated"):
        fashion_mnist.read_idx(tmp_path / "bad")


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FOLDER", tmp_path / "absent")
    monkeypatch.delenv("LIPBENCH_DATA", raising=False)
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        data.load_dataset("fashion-mnist")
    with pytest.raises(UserError, match="not in --data-dir"):  # a folder the user named never falls back
        data.load_dataset("fashion-mnist", str(tmp_path))


def cifar_archive(name: str, n_train: int = 6, n_test: int = 4) -> bytes:
    """A small archive in CIFAR's own format (pickled dicts of uint8 rows)."""
    archive = cifar.ARCHIVES[name]
    rng = np.random.default_rng(1)
    label_key, n_classes = (b"labels", 10) if name == "cifar10" else (b"fine_labels", 100)
    files = ({f"data_batch_{i}": n_train for i in range(1, 6)} | {"test_batch": n_test}) if name == "cifar10" \
        else {"train": n_train, "test": n_test}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for filename, n in files.items():
            batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     label_key: rng.integers(0, n_classes, n).tolist()}
            payload = pickle.dumps(batch)
            info = tarfile.TarInfo(f"{archive.folder}/{filename}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@pytest.mark.parametrize("name, n_train, n_classes", [("cifar10", 30, 10), ("cifar100", 6, 100)])
def test_cifar_archive_in_a_folder_is_extracted_and_read(tmp_path, name, n_train, n_classes):
    (tmp_path / cifar.ARCHIVES[name].filename).write_bytes(cifar_archive(name))
    loaded = data.load_dataset(name, str(tmp_path), download=False)
    assert loaded.x_train.shape == (n_train, 3, 32, 32) and loaded.n_classes == n_classes
    assert float(loaded.x_train.max()) <= 1.0


def test_download_with_right_checksum(tmp_path, http_server, monkeypatch):
    served, url = http_server
    payload = cifar_archive("cifar10")
    (served / "cifar-10-python.tar.gz").write_bytes(payload)
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10",
                        Archive(f"{url}/cifar-10-python.tar.gz", hashlib.md5(payload).hexdigest(),
                                "cifar-10-batches-py", cifar.MIRROR_VARIABLE))
    loaded = data.load_dataset("cifar10", str(tmp_path / "store"))
    assert loaded.x_test.shape == (4, 3, 32, 32)
    assert (tmp_path / "store" / "cifar-10-python.tar.gz").is_file()


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, http_server, monkeypatch):
    served, url = http_server
    (served / "cifar-100-python.tar.gz").write_bytes(cifar_archive("cifar100"))
    monkeypatch.setenv(cifar.MIRROR_VARIABLE, url)  # the official md5 cannot match this archive
    with pytest.raises(UserError, match="checksum mismatch"):
        data.load_dataset("cifar100", str(tmp_path / "store"))
    assert list((tmp_path / "store").iterdir()) == []


def test_unreachable_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(cifar.MIRROR_VARIABLE, "http://127.0.0.1:9")
    with pytest.raises(UserError, match="download it yourself"):
        data.load_dataset("cifar10", str(tmp_path))


def test_npz_dataset_is_validated(tmp_path):
    rng = np.random.default_rng(2)
    good = dict(x_train=rng.random((8, 10, 12, 3)).astype(np.float32), y_train=rng.integers(0, 3, 8),
                x_test=rng.random((4, 10, 12, 3)).astype(np.float32), y_test=rng.integers(0, 3, 4))
    np.savez(tmp_path / "good.npz", **good)
    loaded = data.load_dataset(str(tmp_path / "good.npz"))
    assert loaded.in_shape == (3, 10, 12) and loaded.n_classes == 3
    cases = {"missing": ({k: v for k, v in good.items() if k != "y_test"}, "lacks arrays"),
             "range": ({**good, "x_train": good["x_train"] * 255}, r"must lie in \[0, 1\]"),
             "labels": ({**good, "y_train": good["y_train"][:5]}, "one label per image"),
             "shape": ({**good, "x_test": good["x_test"][:, :5]}, "train images are")}
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(UserError, match=message):
            data.load_dataset(str(tmp_path / f"{name}.npz"))


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    for split, count in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((9, 7, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    loaded = data.load_dataset(str(tmp_path))
    assert loaded.x_train.shape == (6, 3, 9, 7) and loaded.y_test.tolist() == [0, 0, 1, 1]
    (tmp_path / "test" / "cat").rename(tmp_path / "test" / "bird")
    with pytest.raises(UserError, match="same class folders"):
        data.load_dataset(str(tmp_path))


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(UserError, match="cifar10, cifar100, fashion-mnist, imagenet, imagenet-400, synthetic, tiny-imagenet; or a path"):
        data.load_dataset("imagenet-nope")
