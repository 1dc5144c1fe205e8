"""load_image in every mode and every bad case; the offline sample photos."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cnnlens import InputError, load_image, sample_image, sample_images
from cnnlens.images import MAX_PIXELS, sample_description


def _rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


# --------------------------------------------------------------------------- modes


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    loaded = load_image(_save(Image.fromarray(pixels), tmp_path / "a.png"))
    assert loaded.size == (9, 7)
    assert np.array_equal(_rgb(loaded), pixels)


def test_grey_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    loaded = _rgb(load_image(_save(Image.fromarray(grey, "L"), tmp_path / "g.png")))
    assert np.array_equal(loaded, np.repeat(grey[..., None], 3, axis=2))


def test_bilevel(tmp_path: Path) -> None:
    image = Image.new("1", (4, 2))
    image.putpixel((1, 0), 1)
    loaded = _rgb(load_image(_save(image, tmp_path / "b.png")))
    assert loaded[0, 1].tolist() == [255, 255, 255] and loaded[0, 0].tolist() == [0, 0, 0]


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((2, 3, 4), dtype=np.uint8)
    pixels[0, 0] = (200, 100, 0, 255)  # opaque: kept
    pixels[0, 1] = (0, 0, 0, 0)  # transparent: white
    pixels[0, 2] = (0, 0, 0, 128)  # half black over white: 255 * (1 - 128/255) = 127
    pixels[1, :] = (255, 0, 0, 51)  # 20 % red over white
    loaded = _rgb(load_image(_save(Image.fromarray(pixels, "RGBA"), tmp_path / "t.png")))
    assert loaded[0, 0].tolist() == [200, 100, 0]
    assert loaded[0, 1].tolist() == [255, 255, 255]
    assert np.abs(loaded[0, 2].astype(int) - 127).max() <= 1
    assert loaded[1, 0, 0] == 255 and abs(int(loaded[1, 0, 1]) - 204) <= 1


def test_grey_with_alpha(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (10, 255))
    image.putpixel((1, 0), (10, 0))
    loaded = _rgb(load_image(_save(image, tmp_path / "la.png")))
    assert loaded[0, 0].tolist() == [10, 10, 10] and loaded[0, 1].tolist() == [255] * 3


def test_palette_and_palette_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9))
    for x in range(3):
        image.putpixel((x, 0), x)
    loaded = _rgb(load_image(_save(image, tmp_path / "p.png")))
    assert loaded[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    transparent = _rgb(load_image(_save(image, tmp_path / "pt.png", transparency=1)))
    assert transparent[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255]]
    gif = _rgb(load_image(_save(image, tmp_path / "p.gif")))
    assert gif[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


def test_cmyk(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 1))
    image.putpixel((0, 0), (0, 255, 255, 0))  # red
    image.putpixel((1, 0), (0, 0, 0, 255))  # black
    loaded = _rgb(load_image(_save(image, tmp_path / "c.tif")))
    assert loaded[0].tolist() == [[255, 0, 0], [0, 0, 0]]
    jpeg = _rgb(load_image(_save(image.resize((16, 8)), tmp_path / "c.jpg", quality=95)))
    assert jpeg.shape == (8, 16, 3) and np.abs(jpeg[4, 2].astype(int) - [255, 0, 0]).max() < 30


def test_16_bit_scaled_to_8_bit(tmp_path: Path) -> None:
    values = np.array([[0, 257, 257 * 100, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    loaded = _rgb(load_image(_save(image, tmp_path / "d.png")))
    assert loaded[0, :, 0].tolist() == [0, 1, 100, 255]
    assert (loaded[..., 0] == loaded[..., 2]).all()
    tif = _rgb(load_image(_save(image, tmp_path / "d.tif")))
    assert tif[0, :, 0].tolist() == [0, 1, 100, 255]


def test_32_bit_int_and_float(tmp_path: Path) -> None:
    wide = Image.fromarray(np.array([[0, 257 * 3, 65535]], dtype=np.int32), "I")
    assert _rgb(load_image(_save(wide, tmp_path / "i.tif")))[0, :, 0].tolist() == [0, 3, 255]
    narrow = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32), "I")
    assert _rgb(load_image(_save(narrow, tmp_path / "n.tif")))[0, :, 0].tolist() == [0, 7, 255]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert _rgb(load_image(_save(unit, tmp_path / "f.tif")))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[:, :2] = (255, 0, 0)  # left half red
    pixels[:, 2:] = (0, 0, 255)  # right half blue
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display rotated 90 degrees clockwise
    loaded = _rgb(load_image(_save(image, tmp_path / "o.png", exif=exif)))
    assert loaded.shape == (4, 2, 3)
    assert loaded[0, 0].tolist() == [255, 0, 0] and loaded[3, 1].tolist() == [0, 0, 255]
    plain = _rgb(load_image(_save(image, tmp_path / "plain.png")))
    assert plain.shape == (2, 4, 3)


def test_first_frame_of_animation(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert _rgb(load_image(path))[0, 0].tolist() == [255, 0, 0]


def test_returns_an_independent_picture(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (3, 3), (1, 2, 3)), tmp_path / "x.png")
    image = load_image(str(path))
    path.unlink()  # the file is no longer needed: fully decoded
    assert image.getpixel((1, 1)) == (1, 2, 3)


# --------------------------------------------------------------------------- bad files


def _assert_input_error(path: Path, reason: str) -> None:
    with pytest.raises(InputError, match=reason) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message, "the message names the path"
    assert "\n" not in message


def test_missing_path(tmp_path: Path) -> None:
    _assert_input_error(tmp_path / "nope.jpg", "no such file")


def test_directory(tmp_path: Path) -> None:
    _assert_input_error(tmp_path, "is a directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _assert_input_error(path, "empty file")


def test_text_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n")
    _assert_input_error(path, "not an image file")


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    sample_image("cat").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    _assert_input_error(path, "truncated or corrupt")
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(data)
    assert load_image(whole).size == (451, 300)


def test_truncated_jpeg_refused_even_if_pillow_is_told_to_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    _assert_input_error(path, "truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "the global setting is restored"


def test_corrupt_png_data(tmp_path: Path) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(_png_header_only(8, 8, idat=b"garbage, not zlib"))
    _assert_input_error(path, "truncated or corrupt")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A valid PNG signature and header announcing width x height grey pixels, with one
    tiny data chunk: Pillow reads the size without decoding anything."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = idat if idat is not None else zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (12_000, 9_000),  # 108 MP: over our limit, between Pillow's warning and its error
        (20_000, 20_000),  # 400 MP: Pillow itself refuses it as a decompression bomb
        (10_001, 10_000),  # just over 100 MP
    ],
)
def test_over_100_megapixels_refused_before_decoding(
    tmp_path: Path, width: int, height: int
) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(width, height))
    _assert_input_error(path, "megapixel|too large")
    assert width * height > MAX_PIXELS


def test_just_under_the_limit_is_decoded_not_refused(tmp_path: Path) -> None:
    # 100 MP exactly announced, but the data is a stub: the size check lets it through
    # (no warning turned into an error), and decoding then reports the broken data.
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(100_000, 1_000))
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        load_image(path)
    assert "megapixel" not in str(info.value)


# --------------------------------------------------------------------------- samples


def test_sample_names() -> None:
    names = sample_images()
    assert names[:2] == ["cat", "coffee"]
    assert len(names) == len(set(names)) >= 8


@pytest.mark.parametrize("name", sample_images())
def test_every_sample_loads_offline_as_rgb_photo(name: str) -> None:
    image = sample_image(name)
    assert image.mode == "RGB"
    assert min(image.size) >= 256, "large enough for a 224 crop"
    pixels = np.asarray(image)
    assert pixels.std() > 20, "a real photo, not a flat picture"
    assert sample_description(name)


def test_cat_is_chelsea() -> None:
    from skimage import data

    assert np.array_equal(np.asarray(sample_image("cat")), data.chelsea())
    assert np.array_equal(np.asarray(sample_image("coffee")), data.coffee())


def test_grey_sample_is_rgb_with_equal_channels() -> None:
    pixels = np.asarray(sample_image("camera"))
    assert pixels.shape == (512, 512, 3)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_samples_are_fresh_copies() -> None:
    first = sample_image("cat")
    first.paste((0, 0, 0), (0, 0, 50, 50))
    assert sample_image("cat").getpixel((10, 10)) != (0, 0, 0)


def test_unknown_sample_lists_names() -> None:
    with pytest.raises(InputError, match="did you mean cat") as info:
        sample_image("cta")
    assert "coffee" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="available: cat, coffee"):
        sample_image("zebra")
