"""The papers' datasets: Tiny-ImageNet and ImageNet in their release layouts (small fake trees of real
JPEGs), the download with its checksum against a local server, the streaming input pipeline and its
resume, and extra generated data mixed into the batches."""
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipbench import data
from lipbench.datasets import tiny_imagenet
from lipbench.download import Archive
from lipbench.errors import UserError

WNIDS = ["n03444034", "n01443537", "n02085620"]  # written unsorted: the labels follow the sorted order
COLOURS = {0: (250, 10, 10), 1: (10, 250, 10), 2: (10, 10, 250)}  # per sorted class, survives JPEG


def jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG", quality=95)


def tiny_tree(root: Path, per_class: int = 3, val_per_class: int = 2) -> Path:
    """A Tiny-ImageNet-200 release folder with three classes."""
    release = root / "tiny-imagenet-200"
    release.mkdir(parents=True)
    (release / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (release / "words.txt").write_text("".join(f"{w}\tclass {w}\n" for w in WNIDS))
    lines = []
    for label, wnid in enumerate(sorted(WNIDS)):
        for i in range(per_class):
            jpeg(release / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[label])
        for i in range(val_per_class):
            name = f"val_{label * val_per_class + i}.JPEG"
            jpeg(release / "val" / "images" / name, COLOURS[label])
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (release / "val" / "val_annotations.txt").write_text("\n".join(reversed(lines)) + "\n")
    return release


def dominant_channel(x: torch.Tensor) -> list[int]:
    return x.mean(dim=(2, 3)).argmax(dim=1).tolist()


def test_tiny_imagenet_release_folder_loads_with_labels_by_wnid(tmp_path):
    tiny_tree(tmp_path)
    loaded = data.load_dataset("tiny-imagenet", str(tmp_path), download=False)
    assert loaded.x_train.shape == (9, 3, 64, 64) and loaded.x_test.shape == (6, 3, 64, 64)
    assert loaded.n_classes == 3 and loaded.in_shape == (3, 64, 64)
    assert loaded.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert dominant_channel(loaded.x_train) == loaded.y_train.tolist()  # sorted wnid k has colour k
    assert dominant_channel(loaded.x_test) == loaded.y_test.tolist()
    assert sorted(loaded.y_test.tolist()) == [0, 0, 1, 1, 2, 2]


def test_tiny_imagenet_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    release = tiny_tree(tmp_path)
    first = data.load_dataset("tiny-imagenet", str(tmp_path), download=False)
    cache = tmp_path / "tiny-imagenet-200.lipbench.npz"
    assert cache.is_file()
    with np.load(cache, allow_pickle=False) as arrays:
        assert arrays["x_train"].dtype == np.uint8
    monkeypatch.setattr(tiny_imagenet, "decode", lambda files: pytest.fail("decoded although cached"))
    again = data.load_dataset("tiny-imagenet", str(tmp_path), download=False)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    jpeg(release / "train" / WNIDS[0] / "images" / "extra.JPEG", COLOURS[2], (64, 64))  # the tree changed
    monkeypatch.undo()
    assert len(data.load_dataset("tiny-imagenet", str(tmp_path), download=False).x_train) == 10


def test_tiny_imagenet_corrupt_or_missing_image_names_the_file(tmp_path):
    release = tiny_tree(tmp_path)
    broken = release / "train" / sorted(WNIDS)[1] / "images" / f"{sorted(WNIDS)[1]}_0.JPEG"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=f"{broken.name} is not an image") as error:
        data.load_dataset("tiny-imagenet", str(tmp_path), download=False)
    assert "\n" not in str(error.value)
    jpeg(broken, COLOURS[1])
    (release / "val" / "images" / "val_0.JPEG").unlink()
    with pytest.raises(UserError, match="val_0.JPEG is missing"):
        data.load_dataset("tiny-imagenet", str(tmp_path), download=False)


def test_tiny_imagenet_unknown_wnid_in_annotations_is_refused(tmp_path):
    release = tiny_tree(tmp_path)
    with open(release / "val" / "val_annotations.txt", "a") as stream:
        stream.write("val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="val_annotations.txt:7"):
        data.load_dataset("tiny-imagenet", str(tmp_path), download=False)


def zipped_tree(tmp_path: Path) -> bytes:
    release = tiny_tree(tmp_path / "build")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for file in sorted(release.rglob("*")):
            if file.is_file():
                bundle.write(file, str(file.relative_to(release.parent)))
    return buffer.getvalue()


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_tiny_imagenet_download_with_right_checksum(tmp_path, http_server, monkeypatch):
    served, url = http_server
    payload = zipped_tree(tmp_path)
    (served / "tiny-imagenet-200.zip").write_bytes(payload)
    monkeypatch.setattr(tiny_imagenet, "ARCHIVE", Archive(f"{url}/tiny-imagenet-200.zip", hashlib.md5(payload).hexdigest(),
                                                          "tiny-imagenet-200", tiny_imagenet.ARCHIVE.mirror_variable))
    loaded = data.load_dataset("tiny-imagenet", str(tmp_path / "store"))
    assert loaded.x_train.shape == (9, 3, 64, 64)
    assert (tmp_path / "store" / "tiny-imagenet-200" / "wnids.txt").is_file()


def test_tiny_imagenet_download_with_wrong_checksum_keeps_nothing(tmp_path, http_server, monkeypatch):
    served, url = http_server
    (served / "tiny-imagenet-200.zip").write_bytes(zipped_tree(tmp_path))
    monkeypatch.setenv(tiny_imagenet.ARCHIVE.mirror_variable, url)  # the official md5 cannot match
    with pytest.raises(UserError, match="checksum mismatch"):
        data.load_dataset("tiny-imagenet", str(tmp_path / "store"))
    assert list((tmp_path / "store").iterdir()) == []


def test_tiny_imagenet_missing_without_download_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="tiny-imagenet-200.zip"):
        data.load_dataset("tiny-imagenet", str(tmp_path), download=False)
