"""write_beton from every source, then read back; bad sources and bad .beton files give one clear error."""

from __future__ import annotations

import argparse
import hashlib
import shutil

import cv2
import numpy as np
import pytest
import torchvision
from deps_loaders import BetonError, inspect_beton, render_images, val_loader, write_beton
from deps_loaders.cli import add_data_arguments, run_data
from deps_loaders.writer import image_folder_samples
from PIL import Image


def _read_all(path, size, num_classes=None):
    """Every image of a .beton at its stored size (val loader, crop ratio 1, unnormalized) and its labels."""
    loader = val_loader(
        path, 64, resolution=size, crop_ratio=1.0, num_workers=1, mean=(0, 0, 0), std=(1 / 255,) * 3,
        num_classes=num_classes,
    )  # fmt: skip
    batches = list(loader)
    images = np.concatenate([x.permute(0, 2, 3, 1).numpy() for x, _ in batches])
    return np.round(images).astype(np.uint8), np.concatenate([y.numpy() for _, y in batches])


def test_raw_arrays_round_trip_exactly(raw_beton, square_arrays):
    images, labels = square_arrays
    info = inspect_beton(raw_beton)
    assert info.num_samples == 200 and info.num_classes == 10 and not info.jpeg.any()
    got_images, got_labels = _read_all(raw_beton, 32)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_images, images)


def test_jpeg_round_trip_preserves_labels_and_statistics(tmp_path, square_arrays):
    images, labels = square_arrays
    summary = write_beton((images, labels), tmp_path / "j.beton", write_mode="jpg", num_workers=2, progress=False)
    assert (summary.images, summary.classes) == (200, 10) and summary.bytes == (tmp_path / "j.beton").stat().st_size
    got_images, got_labels = _read_all(tmp_path / "j.beton", 32)
    np.testing.assert_array_equal(got_labels, labels)
    per_channel = np.abs(got_images.reshape(-1, 3).mean(0) - images.reshape(-1, 3).mean(0))
    assert (per_channel < 1.5).all()
    # JPEG q90 with 4:2:0 chroma subsampling on 32×32 colourful images: ~7 levels; swapped channels give ~50
    assert np.abs(got_images.astype(float) - images).mean() < 10


def test_proportion_mode_stores_both_kinds_and_max_resolution_downscales(tmp_path):
    images, labels = render_images(60, height=48, width=80, seed=1)
    write_beton((images, labels), tmp_path / "p.beton", max_resolution=40, num_workers=1, progress=False)
    info = inspect_beton(tmp_path / "p.beton")
    assert 0 < info.jpeg.mean() < 1  # the ffcv-imagenet default: JPEG with probability 0.5, raw otherwise
    assert (info.widths == 40).all() and (info.heights == 24).all()  # longest side 80 → 40


def test_image_folder_keeps_torchvision_order_and_labels(jpeg_folder, folder_beton):
    reference = torchvision.datasets.ImageFolder(str(jpeg_folder))
    info = inspect_beton(folder_beton)
    np.testing.assert_array_equal(info.labels, reference.targets)
    sizes = [Image.open(p).size for p, _ in reference.samples]
    np.testing.assert_array_equal(info.widths, [w for w, _ in sizes])
    np.testing.assert_array_equal(info.heights, [h for _, h in sizes])


def test_unreadable_images_are_skipped_and_listed_or_refused_with_strict(tmp_path, jpeg_folder, capsys):
    root = tmp_path / "folder"
    shutil.copytree(jpeg_folder, root)
    good = root / "class1" / "img000.jpg"
    truncated = root / "class1" / "img001.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage = root / "class2" / "not_an_image.jpg"
    garbage.write_bytes(b"this is not a JPEG")
    summary = write_beton(root, tmp_path / "f.beton", write_mode="jpg", num_workers=2)
    assert summary.images == 64 - 1 and set(summary.skipped) == {str(truncated), str(garbage)}
    out = capsys.readouterr().out
    assert "skipped 2 unreadable" in out and "img001.jpg" in out
    assert inspect_beton(tmp_path / "f.beton").num_samples == 63
    with pytest.raises(ValueError, match="unreadable image"):
        write_beton(root, tmp_path / "g.beton", strict=True, num_workers=2, progress=False)
    assert not (tmp_path / "g.beton").exists()


def test_folder_errors_name_the_problem(tmp_path, jpeg_folder):
    with pytest.raises(FileNotFoundError, match="missing"):
        write_beton(tmp_path / "missing", tmp_path / "x.beton", progress=False)
    empty = tmp_path / "empty_class"
    shutil.copytree(jpeg_folder, empty)
    (empty / "class9").mkdir()
    with pytest.raises(ValueError, match="without images: class9"):
        write_beton(empty, tmp_path / "x.beton", progress=False)
    train_classes = image_folder_samples(jpeg_folder)[1]
    shutil.rmtree(empty / "class9")
    shutil.rmtree(empty / "class3")
    with pytest.raises(ValueError, match=r"missing: \['class3'\]"):
        write_beton(empty, tmp_path / "x.beton", classes=train_classes, progress=False)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        write_beton(jpeg_folder, tmp_path / "nodir" / "x.beton", progress=False)


def test_torchvision_datasets_are_written(tmp_path, jpeg_folder):
    # FakeData: PIL images built in memory by torchvision; an ImageFolder object: PIL images read from local files
    fake = torchvision.datasets.FakeData(size=30, image_size=(3, 20, 28), num_classes=3, random_offset=5)
    summary = write_beton(fake, tmp_path / "fake.beton", write_mode="raw", num_workers=2, progress=False)
    info = inspect_beton(tmp_path / "fake.beton")
    assert summary.images == 30 and (info.heights == 20).all() and (info.widths == 28).all()
    np.testing.assert_array_equal(info.labels, [int(fake[i][1]) for i in range(30)])
    folder = torchvision.datasets.ImageFolder(str(jpeg_folder))
    write_beton(folder, tmp_path / "folder.beton", num_workers=2, progress=False)
    np.testing.assert_array_equal(inspect_beton(tmp_path / "folder.beton").labels, folder.targets)


def test_cifar_read_from_local_files(tmp_path, square_arrays):
    """torchvision's CIFAR10 reader on local files in its format (download=False); the subclass skips only the MD5
    checks of the original files."""
    import pickle

    from torchvision.datasets import CIFAR10

    images, labels = square_arrays  # 200 images: 5 training batches of 30, a test batch of 50
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    chunks = [(f"data_batch_{i + 1}", slice(30 * i, 30 * (i + 1))) for i in range(5)] + [
        ("test_batch", slice(150, 200))
    ]
    for name, part in chunks:
        entry = {"data": images[part].transpose(0, 3, 1, 2).reshape(-1, 3072), "labels": labels[part].tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))

    class LocalCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:  # also MD5-checked
            self.classes = [f"c{i}" for i in range(10)]

    dataset = LocalCIFAR10(str(tmp_path), train=True, download=False)
    summary = write_beton(dataset, tmp_path / "cifar.beton", write_mode="raw", num_workers=1, progress=False)
    assert (summary.images, summary.classes) == (150, 10)
    got_images, got_labels = _read_all(tmp_path / "cifar.beton", 32)
    np.testing.assert_array_equal(got_labels, labels[:150])
    np.testing.assert_array_equal(got_images, images[:150])


@pytest.mark.parametrize(
    "images, labels, kwargs, match",
    [
        (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 2, 3]), {"num_classes": 3}, "label 3 of sample 3"),
        (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 2]), {}, "3 labels for 4 images"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, -1]), {}, "label -1"),
        (np.zeros((2, 8, 8, 3), np.float32), np.array([0, 1]), {}, "uint8"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)], [0, 1], {}, "image 1"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), {"write_mode": "png"}, "write_mode"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), {"jpeg_quality": 0}, "jpeg_quality"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), {"compress_probability": 2.0}, "compress_probability"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), {"max_resolution": -5}, "max_resolution"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), {"num_workers": 0}, "num_workers: 0"),
    ],
)
def test_bad_arrays_and_options_are_refused_before_writing(tmp_path, images, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_beton((images, labels), tmp_path / "x.beton", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_raw_writes_are_byte_identical(tmp_path, square_arrays):
    digests = set()
    for name in ("a", "b"):
        write_beton(square_arrays, tmp_path / f"{name}.beton", write_mode="raw", num_workers=1, progress=False)
        digests.add(hashlib.sha256((tmp_path / f"{name}.beton").read_bytes()).hexdigest())
    assert len(digests) == 1


# --- bad .beton files -------------------------------------------------------------------------------------------------


def test_missing_and_malformed_files(tmp_path, raw_beton):
    with pytest.raises(FileNotFoundError, match="nope.beton"):
        val_loader(tmp_path / "nope.beton", 8)
    with pytest.raises(BetonError, match="not a file"):
        inspect_beton(tmp_path)
    (tmp_path / "junk.beton").write_bytes(b"\x07" * 100)
    with pytest.raises(BetonError, match="junk.beton: not a .beton"):
        inspect_beton(tmp_path / "junk.beton")
    data = raw_beton.read_bytes()
    (tmp_path / "cut.beton").write_bytes(data[: len(data) // 2])
    with pytest.raises(BetonError, match="cut.beton: truncated"):
        val_loader(tmp_path / "cut.beton", 8)
    interrupted = bytearray(data)
    interrupted[16:24] = bytes(8)  # the header's allocation-table pointer, written last by the writer
    (tmp_path / "interrupted.beton").write_bytes(bytes(interrupted))
    with pytest.raises(BetonError, match="incomplete"):
        inspect_beton(tmp_path / "interrupted.beton")


def test_a_beton_without_image_and_label_fields(tmp_path):
    from ffcv.fields import FloatField, IntField
    from ffcv.writer import DatasetWriter

    class Pairs:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return float(i), i

    DatasetWriter(str(tmp_path / "other.beton"), {"x": FloatField(), "label": IntField()}, num_workers=1)\
        .from_indexed_dataset(Pairs())  # fmt: skip
    with pytest.raises(BetonError, match=r"expected fields 'image' \(RGBImageField\).*found 'x' \(FloatField\)"):
        val_loader(tmp_path / "other.beton", 2)


def test_labels_outside_num_classes_are_refused(raw_beton):
    with pytest.raises(BetonError, match=r"raw.beton: label 5 of sample 5 is outside \[0, 5\)"):
        val_loader(raw_beton, 8, resolution=32, num_classes=5)


def test_corrupt_jpeg_data_raises_in_the_consumer(tmp_path, folder_beton, epoch_threads):
    info = inspect_beton(folder_beton)
    from ffcv.reader import Reader

    reader = Reader(str(folder_beton))
    ptr = int(reader.metadata["f0"]["data_ptr"][5])
    data = bytearray(folder_beton.read_bytes())
    data[ptr : ptr + 2] = b"\0\0"  # no JPEG start-of-image marker: libjpeg-turbo refuses the sample
    (tmp_path / "bad.beton").write_bytes(bytes(data))
    loader = val_loader(tmp_path / "bad.beton", 16, resolution=32, num_workers=1)
    assert info.num_samples == 64
    with pytest.raises(BetonError, match=r"could not decode sample\(s\) \[5\]"):
        list(loader)
    assert epoch_threads() == []


# --- deps data --------------------------------------------------------------------------------------------------------


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="deps data", exit_on_error=False)
    add_data_arguments(parser)
    return run_data(parser.parse_args([str(a) for a in argv]))


def test_deps_data_writes_and_reports_bad_input_in_one_line(tmp_path, jpeg_folder, capsys):
    assert _cli(jpeg_folder, tmp_path / "t.beton", "--num-workers", 2, "--write-mode", "jpg") == 0
    assert "wrote 64 images of 4 classes" in capsys.readouterr().out
    assert inspect_beton(tmp_path / "t.beton").num_samples == 64
    assert _cli(jpeg_folder, tmp_path / "v.beton", "--classes-from", jpeg_folder, "--quiet", "--num-workers", 2) == 0
    written = (tmp_path / "t.beton").read_bytes()
    for argv, match in [
        ((jpeg_folder, tmp_path / "t.beton", "--quiet"), f"output: {tmp_path / 't.beton'} exists; pass --overwrite"),
        ((tmp_path / "nowhere", tmp_path / "x.beton"), "nowhere: no such directory"),
        ((f"cifar10:{tmp_path}", tmp_path / "c.beton"), "no cifar10 train files"),
        ((jpeg_folder,), "output"),
    ]:
        assert _cli(*argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("deps data: error: ") and match in err and err.count("\n") == 1
    assert (tmp_path / "t.beton").read_bytes() == written  # the refused write left the file as it was
    args = (jpeg_folder, tmp_path / "t.beton", "--quiet", "--num-workers", 2, "--write-mode", "raw", "--overwrite")
    assert _cli(*args) == 0 and (tmp_path / "t.beton").read_bytes() != written
    parser = argparse.ArgumentParser(prog="deps data", exit_on_error=False)
    add_data_arguments(parser)
    with pytest.raises(argparse.ArgumentError, match=r"\[1, 100\]"):
        parser.parse_args([str(jpeg_folder), "x.beton", "--jpeg-quality", "101"])


def test_images_written_by_opencv_and_pil_agree(tmp_path):
    # the writer decodes with PIL, FFCV encodes with OpenCV: colours must not be swapped (RGB vs BGR)
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 255  # pure red
    (tmp_path / "red" / "a").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "red" / "a" / "x.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    write_beton(tmp_path / "red", tmp_path / "r.beton", write_mode="jpg", num_workers=1, progress=False)
    got, _ = _read_all(tmp_path / "r.beton", 16)
    assert got[0, 8, 8, 0] > 240 and got[0, 8, 8, 2] < 15
