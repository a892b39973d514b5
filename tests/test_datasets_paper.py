"""The papers' datasets: Tiny-ImageNet and ImageNet in their release layouts (small fake trees of real
JPEGs), the download with its checksum against a local server, the streaming input pipeline and its
resume, and extra generated data mixed into the batches."""
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipbench import batches, data, streaming
from lipbench.datasets import tiny_imagenet
from lipbench.download import Archive
from lipbench.errors import UserError
from lipbench import job
from lipbench.job import run_job
from lipbench.registry import get_method
from lipbench.report.board import leaderboard, shown_metrics
from lipbench.report.cells import board_tables
from lipbench.report.runs import load_results
from lipbench.settings import JobConfig, TrainSettings
from lipbench.train import train

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


IMAGENET_WNIDS = ["n01440764", "n01443537", "n01484850"]


def imagenet_tree(root: Path, per_class: int = 6, val_per_class: int = 2) -> Path:
    """ImageNet's ImageFolder layout; images of several sizes, the class k coloured by channel k."""
    for label, wnid in enumerate(IMAGENET_WNIDS):
        for i in range(per_class):
            jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", COLOURS[label], (40 + 7 * i, 36 + 5 * (i % 3)))
        for i in range(val_per_class):
            jpeg(root / "val" / wnid / f"ILSVRC2012_val_{label}{i}.JPEG", COLOURS[label], (50, 40))
    return root


def test_imagenet_streams_crops_of_the_chosen_size_with_labels_by_wnid(tmp_path):
    imagenet_tree(tmp_path)
    loaded = data.load_dataset("imagenet:size=24", str(tmp_path))
    assert isinstance(loaded, data.StreamingDataset) and not hasattr(loaded, "x_train")
    assert loaded.in_shape == (3, 24, 24) and loaded.n_classes == 3 and loaded.sizes == (18, 6)
    loaded.workers = 0
    batches = loaded.train_batches(batch_size=5, seed=0)
    assert batches.per_epoch == 3
    for _ in range(4):
        x, y = batches.next()
        assert x.shape == (5, 3, 24, 24) and x.dtype == torch.float32
        assert dominant_channel(x + loaded.mean) == y.tolist()
        assert float((x + loaded.mean).min()) >= 0 and float((x + loaded.mean).max()) <= 1
    tests = list(loaded.test_batches(4))
    assert [len(y) for _, y in tests] == [4, 2]
    assert torch.cat([y for _, y in tests]).tolist() == [0, 0, 1, 1, 2, 2] == loaded.y_test.tolist()


def test_imagenet_class_subset_and_bad_options(tmp_path):
    imagenet_tree(tmp_path)
    subset = data.load_dataset("imagenet:classes=2:size=16", str(tmp_path))
    assert subset.n_classes == 2 and subset.sizes == (12, 4) and subset.in_shape == (3, 16, 16)
    with pytest.raises(UserError, match="fewer than the 400"):
        data.load_dataset("imagenet-400", str(tmp_path))
    with pytest.raises(UserError, match="has no option 'depth'"):
        data.load_dataset("imagenet:depth=3", str(tmp_path))
    with pytest.raises(UserError, match="positive integer"):
        data.load_dataset("imagenet:size=big", str(tmp_path))
    with pytest.raises(UserError, match="has no option 'size'"):
        data.load_dataset("synthetic:size=3")
    (tmp_path / "val" / IMAGENET_WNIDS[0] / "ILSVRC2012_val_00.JPEG").write_bytes(b"broken")
    broken = data.load_dataset("imagenet:size=16", str(tmp_path))
    broken.workers = 0
    with pytest.raises(UserError, match="ILSVRC2012_val_00.JPEG is not an image"):
        list(broken.test_batches(4))


def test_streaming_resume_draws_the_batches_of_an_uninterrupted_run_whatever_the_workers(tmp_path):
    imagenet_tree(tmp_path)
    loaded = data.load_dataset("imagenet:size=16", str(tmp_path))
    loaded.workers = 0
    uninterrupted = loaded.train_batches(batch_size=4, seed=7)  # 4 batches an epoch
    expected = [uninterrupted.next() for _ in range(10)]
    first = loaded.train_batches(batch_size=4, seed=7)
    for _ in range(3):
        first.next()
    state = first.state_dict()
    loaded.workers = 2
    resumed = loaded.train_batches(batch_size=4, seed=7)
    resumed.load_state_dict(state)
    for (x, y), (x_resumed, y_resumed) in zip(expected[3:], (resumed.next() for _ in range(7))):  # across epochs
        assert torch.equal(x, x_resumed) and torch.equal(y, y_resumed)
    assert not torch.equal(expected[0][0], expected[4][0])  # a new epoch, a new order and new crops


class LinearProbe(torch.nn.Module):
    """A linear classifier: a model that trains in milliseconds, with its exact Lipschitz bound."""

    def __init__(self, in_shape, n_classes):
        super().__init__()
        self.in_shape, self.linear = tuple(in_shape), torch.nn.Linear(int(np.prod(in_shape)), n_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))

    def lipschitz_bound(self):
        return float(torch.linalg.matrix_norm(self.linear.weight.detach(), 2))


def linear_probe(layer, size, in_shape, n_classes, *args, **options):
    torch.manual_seed(0)
    return LinearProbe(in_shape, n_classes)


def test_training_on_a_stream_resumes_its_data_order_from_the_checkpoint(tmp_path, monkeypatch):
    imagenet_tree(tmp_path / "tree")
    loaded = data.load_dataset("imagenet:size=16", str(tmp_path / "tree"))
    loaded.workers = 0
    seen = []
    original = streaming.StreamingBatches.next

    def recording_next(self):
        x, y = original(self)
        seen.append((x.clone(), y.clone()))
        return x, y

    monkeypatch.setattr(streaming.StreamingBatches, "next", recording_next)
    method = get_method("aol")

    def run(max_steps, checkpoint):
        model = linear_probe("aol", "XS", loaded.in_shape, loaded.n_classes)
        settings = TrainSettings(budget_s=60, batch_size=4, max_steps=max_steps)
        return train(model, method, loaded, settings, torch.device("cpu"), seed=1, checkpoint=checkpoint,
                     checkpoint_every=0.0)

    run(7, None)
    uninterrupted, seen[:] = list(seen), []
    run(3, tmp_path / "checkpoint.pt")
    resumed = run(7, tmp_path / "checkpoint.pt")
    assert resumed.resumed_at_step == 3 and resumed.steps == 7
    assert len(seen) == 7
    for (x, y), (x_again, y_again) in zip(uninterrupted, seen):
        assert torch.equal(x, x_again) and torch.equal(y, y_again)


def test_a_streamed_job_trains_certifies_and_records(tmp_path, monkeypatch):
    imagenet_tree(tmp_path / "tree")
    monkeypatch.setattr(job, "create_model", linear_probe)
    monkeypatch.setattr(job, "STREAMED_INPUT_SECONDS", 0.2)
    config = JobConfig(layer="aol", size="XS", dataset="imagenet:size=16", budget="30s", budget_s=30.0,
                       batch_size=4, max_steps=4, data_dir=str(tmp_path / "tree"), save_model=False)
    (tmp_path / "job").mkdir()
    record = run_job(config, tmp_path / "job")
    assert record["status"] == "ok", record.get("error")
    assert record["n_test"] == 6 and record["n_classes"] == 3 and record["dataset_memory_mb"] == 0
    assert record["steps"] == 4 and 0 <= record["cra_36"] <= record["clean_acc"] <= 1
    assert record["input_throughput"] > 0 and record["train_throughput"] > 0


def labelled_dataset(tmp_path: Path) -> Path:
    """An .npz dataset of 8 x 8 grey images whose real images all have label 0 (so extra ones, label 1, show)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "real.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y_train=np.zeros(40, dtype=np.int64),
             x_test=rng.integers(0, 256, (10, 8, 8), dtype=np.uint8), y_test=np.arange(10) % 2)
    np.savez(tmp_path / "generated.npz", x=rng.integers(0, 256, (30, 8, 8), dtype=np.uint8),
             y=np.ones(30, dtype=np.int64))
    return path


@pytest.mark.parametrize("batch_size, ratio, n_extra", [(8, 0.75, 6), (10, 0.5, 5), (7, 0.25, 2)])
def test_extra_data_makes_up_its_ratio_of_every_batch_and_of_each_half(tmp_path, batch_size, ratio, n_extra):
    real = data.load_dataset(str(labelled_dataset(tmp_path)))
    mixed = data.with_extra_data(real, str(tmp_path / "generated.npz"), ratio)
    assert mixed.extra.fields()["extra_size"] == 30 and mixed.extra.ratio == ratio
    source = batches.training_batches(mixed, batch_size, augment=True, seed=0)
    assert source.per_epoch == 40 // (batch_size - n_extra)  # an epoch is a pass over the real images
    for _ in range(12):
        x, y = source.next()
        assert x.shape == (batch_size, 1, 8, 8) and int(y.sum()) == n_extra
        assert abs(int(y[:batch_size // 2].sum()) - n_extra / 2) <= 1  # a DDP rank's half keeps the ratio
    state = source.state_dict()
    expected = [source.next() for _ in range(3)]
    resumed = batches.training_batches(mixed, batch_size, augment=True, seed=0)
    resumed.load_state_dict(state)
    for (x, y), (x_again, y_again) in zip(expected, (resumed.next() for _ in range(3))):
        assert torch.equal(x, x_again) and torch.equal(y, y_again)


def test_extra_data_is_checked(tmp_path):
    real = data.load_dataset(str(labelled_dataset(tmp_path)))
    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 9, 9), dtype=np.uint8), y=np.zeros(3, dtype=np.int64))
    with pytest.raises(UserError, match=r"its images are \(1, 9, 9\), the dataset's \(1, 8, 8\)"):
        data.with_extra_data(real, str(tmp_path / "wrong.npz"), 0.5)
    with pytest.raises(UserError, match="in \\(0, 1\\)"):
        data.with_extra_data(real, str(tmp_path / "generated.npz"), 1.0)
    np.savez(tmp_path / "labels.npz", x=np.zeros((3, 8, 8), dtype=np.uint8), y=np.full(3, 5))
    with pytest.raises(UserError, match="labels reach 5 but"):
        data.with_extra_data(real, str(tmp_path / "labels.npz"), 0.5)


def test_extra_data_is_recorded_and_reported_apart(tmp_path, monkeypatch):
    path = labelled_dataset(tmp_path)
    monkeypatch.setattr(job, "create_model", linear_probe)
    digest = hashlib.sha256((tmp_path / "generated.npz").read_bytes()).hexdigest()
    common = dict(layer="aol", size="XS", dataset=str(path), budget="30s", budget_s=30.0, batch_size=8, max_steps=3,
                  save_model=False)
    plain = JobConfig(**common)
    mixed = JobConfig(**common, extra_data=str(tmp_path / "generated.npz"), extra_ratio=0.75)
    assert plain.job_id != mixed.job_id
    for config in (plain, mixed):
        (tmp_path / "out" / config.job_id).mkdir(parents=True)
        record = run_job(config, tmp_path / "out" / config.job_id)
        assert record["status"] == "ok", record.get("error")
    assert "extra_file" not in json.loads((tmp_path / "out" / plain.job_id / "record.json").read_text())
    extra = json.loads((tmp_path / "out" / mixed.job_id / "record.json").read_text())
    assert (extra["extra_file"], extra["extra_size"], extra["extra_sha256"], extra["extra_ratio"]) == \
        ("generated.npz", 30, digest, 0.75)
    board = leaderboard(load_results([tmp_path / "out"])[0])
    assert board["rank"].tolist() == [1.0, 1.0]  # never ranked against each other
    tables = board_tables(board, shown_metrics(board))
    assert [table.dataset for table in tables] == [str(path), f"{path} + extra data generated.npz {digest[:8]} at 75%"]
    assert "extra data: none" in tables[0].caption
    assert f"extra data: generated.npz {digest[:8]} at 75%" in tables[1].caption
