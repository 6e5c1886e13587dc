"""Image I/O: bit depths, modes, alpha, EXIF orientation, ICC/EXIF, atomic writes, errors."""
import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

from magncli.errors import MagnError
from magncli.images import Image, decode_image, encode_float_image, read_image, write_image

import hostile_kit

RNG = np.random.default_rng(0)


def _rand(shape, dtype=np.uint8):
    peak = np.iinfo(dtype).max
    return RNG.integers(0, peak + 1, size=shape, dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".webp"])
@pytest.mark.parametrize("channels,alpha", [(1, False), (3, False), (3, True), (1, True)])
def test_8bit_lossless_roundtrip(tmp_path, ext, channels, alpha):
    if ext == ".bmp" and alpha:
        pytest.skip("BMP alpha is not portable")
    img = Image(_rand((13, 17, channels)), _rand((13, 17)) if alpha else None)
    path = write_image(tmp_path / f"x{ext}", img)
    back = read_image(path)
    if ext == ".webp" and channels == 1:
        # WebP has no gray mode: it comes back as RGB with equal channels.
        assert np.array_equal(back.pixels[..., 0:1], img.pixels)
    else:
        assert np.array_equal(back.pixels, img.pixels)
    if alpha:
        assert np.array_equal(back.alpha, img.alpha)
    else:
        assert back.alpha is None


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("channels,alpha", [(1, False), (3, False), (3, True)])
def test_16bit_stays_16bit(tmp_path, ext, channels, alpha):
    img = Image(_rand((9, 11, channels), np.uint16), _rand((9, 11), np.uint16) if alpha else None)
    path = write_image(tmp_path / f"x{ext}", img)
    back = read_image(path)
    assert back.bit_depth == 16 and np.array_equal(back.pixels, img.pixels)
    # Independent oracle: OpenCV sees the same 16-bit values (in BGR order).
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    rgb = raw if raw.ndim == 2 else raw[..., 2::-1] if raw.shape[2] >= 3 else raw
    assert np.array_equal(rgb.reshape(9, 11, -1)[..., :channels], img.pixels)
    if alpha:
        assert np.array_equal(back.alpha, img.alpha)


@pytest.mark.parametrize("channels", [1, 3])
def test_float_tiff_keeps_unclipped_values(tmp_path, channels):
    """Gray and RGB (Pillow cannot open RGB float TIFFs; magn reads them through OpenCV)."""
    px = RNG.standard_normal((8, 6, channels)).astype(np.float32)
    back = read_image(write_image(tmp_path / "f.tif", Image(px)))
    assert back.pixels.dtype == np.float32 and np.array_equal(back.pixels, px)
    # Independent oracle: OpenCV reads the same values, in BGR order.
    raw = cv2.imread(str(tmp_path / "f.tif"), cv2.IMREAD_UNCHANGED).reshape(8, 6, channels)
    assert np.array_equal(raw[..., ::-1], px)


def test_an_rgb_float_tiff_is_checked_like_any_image(tmp_path, monkeypatch):
    data = encode_float_image(RNG.random((8, 6, 3)).astype(np.float32), "tiff")
    monkeypatch.setattr("magncli.images.reading.MAX_PIXELS", 40)
    with pytest.raises(MagnError, match="too large|pixels"):
        decode_image(data)
    monkeypatch.undo()
    with pytest.raises(MagnError, match="truncated|cannot decode"):
        decode_image(data[:30])


def test_16bit_to_8bit_format_rounds(tmp_path):
    px = np.array([[[0], [257], [65535], [32896]]], np.uint16)  # 32896/257 = 128.0
    back = read_image(write_image(tmp_path / "x.bmp", Image(px)))
    assert back.pixels.ravel().tolist() == [0, 1, 255, 128]


def test_palette_with_transparency_becomes_rgba(tmp_path):
    pal = PILImage.new("P", (4, 3))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.putdata([0, 1, 2, 0] * 3)
    pal.info["transparency"] = 1
    path = tmp_path / "p.png"
    pal.save(path, transparency=1)
    img = read_image(path)
    assert img.channels == 3 and img.alpha is not None
    assert img.pixels[0, 0].tolist() == [255, 0, 0] and img.alpha[0, 1] == 0 and img.alpha[0, 0] == 255


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    px = _rand((6, 10, 3))
    pil = PILImage.fromarray(px)
    exif = pil.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    pil.save(path, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(PILImage.open(path)).convert("RGB"))
    img = read_image(path)
    assert np.array_equal(img.pixels, expected)
    # The written file is upright: its orientation tag is reset, so viewers don't rotate twice.
    out = write_image(tmp_path / "w.png", img)
    assert PILImage.open(out).getexif().get(0x0112, 1) == 1


@pytest.mark.parametrize("orientation", [3, 6])
def test_exif_orientation_16bit(tmp_path, orientation):
    px = _rand((6, 10, 1), np.uint16)
    png = cv2.imencode(".png", px)[1].tobytes()
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    from magncli.images.writing import _png_add_chunks
    path = tmp_path / "o16.png"
    path.write_bytes(_png_add_chunks(png, None, exif.tobytes()))
    img = read_image(path)
    expected = np.rot90(px, 2) if orientation == 3 else np.rot90(px, -1)
    assert np.array_equal(img.pixels, expected)


@pytest.mark.parametrize("ext,dtype", [(".png", np.uint8), (".jpg", np.uint8), (".tif", np.uint8),
                                       (".webp", np.uint8), (".png", np.uint16)])
def test_icc_and_exif_survive(tmp_path, ext, dtype):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = PILImage.Exif()
    exif[0x010F] = "MagnCam"                    # Make
    img = Image(_rand((8, 8, 3), dtype), None, icc, exif.tobytes())
    back = read_image(write_image(tmp_path / f"x{ext}", img))
    assert back.icc_profile == icc
    assert PILImage.open(tmp_path / f"x{ext}").getexif().get(0x010F) == "MagnCam"


def test_non_ascii_path(tmp_path):
    path = tmp_path / "фото ü 写真.png"
    write_image(path, Image(_rand((5, 5, 3))))
    assert read_image(path).pixels.shape == (5, 5, 3)


def test_writes_are_atomic_and_never_overwrite(tmp_path):
    path = tmp_path / "out.png"
    write_image(path, Image(_rand((4, 4, 1))))
    before = path.read_bytes()
    with pytest.raises(MagnError, match="already exists"):
        write_image(path, Image(_rand((4, 4, 1))))
    assert path.read_bytes() == before
    write_image(path, Image(np.zeros((4, 4, 1), np.uint8)), overwrite=True)
    assert read_image(path).pixels.max() == 0
    assert os.listdir(tmp_path) == ["out.png"]          # no temporary files left


def test_failed_encode_leaves_nothing(tmp_path):
    with pytest.raises(MagnError):
        write_image(tmp_path / "x.gif", Image(_rand((4, 4, 1))))
    assert os.listdir(tmp_path) == []


def test_jpeg_quality_option(tmp_path):
    px = _rand((64, 64, 3))
    small = write_image(tmp_path / "lo.jpg", Image(px), jpeg_quality=20).stat().st_size
    large = write_image(tmp_path / "hi.jpg", Image(px), jpeg_quality=95).stat().st_size
    assert small < large


@pytest.mark.parametrize("content,message", [
    (b"", "empty file"),
    (b"this is not an image at all", "not an image"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(MagnError, match=message) as e:
        read_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file_is_an_error(tmp_path, ext):
    buf = io.BytesIO()
    PILImage.fromarray(_rand((64, 64, 3))).save(buf, format="PNG" if ext == ".png" else "JPEG")
    path = tmp_path / f"t{ext}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(MagnError) as e:
        read_image(path)
    assert str(path) in str(e.value)


def test_missing_directory_and_too_large(tmp_path, monkeypatch):
    with pytest.raises(MagnError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(MagnError, match="directory"):
        read_image(tmp_path)
    path = write_image(tmp_path / "big.png", Image(_rand((40, 40, 1))))
    monkeypatch.setattr("magncli.images.reading.MAX_PIXELS", 1000)
    with pytest.raises(MagnError, match="too large"):
        read_image(path)


def test_to_float_and_back_is_exact_for_8_and_16_bit():
    for dtype in (np.uint8, np.uint16):
        img = Image(_rand((7, 7, 3), dtype))
        assert np.array_equal(img.with_pixels(img.to_float()).pixels, img.pixels)


def test_written_files_get_the_usual_permissions(tmp_path):
    # mkstemp makes 0600 files; outputs must follow the umask like any other program's.
    umask = os.umask(0o022)
    try:
        path = write_image(tmp_path / "p.png", Image(_rand((4, 4, 1))))
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644


# --------------------------------------------------------------------------- issue 19
# Hostile and unlucky files: each is one MagnError line naming the file, before decoding.
def _one_line_error(path, *words):
    with pytest.raises(MagnError) as e:
        read_image(path)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (20_000, 10_000)])
def test_a_png_claiming_a_huge_size_is_one_line(tmp_path, width, height):
    # A 1 KB file claiming 10^10 pixels used to escape as Pillow's DecompressionBombError
    # (a 53-line traceback); 20000x10000 fired Pillow's limit, not magn's.
    path = hostile_kit.bomb(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 1024
    message = _one_line_error(path)
    assert "too large" in message or "too small to hold" in message


def test_the_size_limit_is_one_rule_that_says_how_to_raise_it(tmp_path, monkeypatch):
    path = write_image(tmp_path / "p.png", Image(_rand((40, 40, 3))))
    # Pillow's own limit no longer decides: below magn's limit the image loads, even
    # where Pillow's would have refused, and the caller's Pillow setting is kept.
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    assert read_image(path).pixels.shape == (40, 40, 3)
    assert PILImage.MAX_IMAGE_PIXELS == 100
    # Over magn's limit: the same message whether Pillow warns (1x-2x) or raises (>2x).
    monkeypatch.setattr("magncli.images.reading.MAX_PIXELS", 1000)
    message = _one_line_error(path, "too large", "40x40 = 1,600 pixels", "limit of 1,000", "MAGN_MAX_PIXELS")
    monkeypatch.setattr("magncli.images.reading.MAX_PIXELS", 700)
    assert "1,600 pixels" in _one_line_error(path, "too large", "limit of 700", "MAGN_MAX_PIXELS")
    assert "width x height" in message
    assert PILImage.MAX_IMAGE_PIXELS == 100


def test_max_pixels_comes_from_the_environment(tmp_path):
    import subprocess
    import sys
    path = write_image(tmp_path / "p.png", Image(_rand((40, 40, 1))))
    code = "from magncli.images import read_image; read_image(%r)" % str(path)
    env = dict(os.environ, MAGN_MAX_PIXELS="1000")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "limit of 1,000" in res.stderr


def test_a_huge_png_with_a_tiny_truncated_idat_is_refused_at_once(tmp_path, monkeypatch):
    # 12000x12000 from 85 bytes: refused from its size alone, before Pillow allocates
    # 432 MB (magn restore used to run for minutes on such a file).
    path = tmp_path / "t.png"
    path.write_bytes(hostile_kit.png_claiming(12_000, 12_000))
    decoded = []
    monkeypatch.setattr("magncli.images.reading._decode_pillow", lambda pil: decoded.append(1))
    _one_line_error(path, "too small to hold the 12000x12000 pixels", "truncated")
    assert not decoded


@pytest.mark.parametrize("end", [True, False])
def test_a_png_whose_data_ends_early_is_an_error_even_if_pillow_is_told_to_pad(tmp_path, monkeypatch, end):
    from PIL import ImageFile
    path = tmp_path / "t.png"
    # 300 rows declared, 20 given: plausible by size, so Pillow decodes and runs out.
    path.write_bytes(hostile_kit.png_claiming(300, 300, _rand((20 * 901,)).tobytes(), end=end))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)    # another library's choice
    _one_line_error(path, "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize("name", ["anim.gif", "pages.tif", "anim.png", "anim.webp"])
def test_several_frames_or_pages_are_refused_never_dropped(tmp_path, name):
    path = hostile_kit.animated(tmp_path / name, 3)
    _one_line_error(path, "3 frames or pages", "single-frame")
    hostile_kit.frames(1)[0].save(tmp_path / f"one{path.suffix}")
    assert read_image(tmp_path / f"one{path.suffix}").pixels.shape == (8, 8, 3)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1e9"])
def test_a_max_pixels_setting_that_is_not_a_count_is_one_line_and_spares_other_commands(tmp_path, value):
    """Issue #37: MAGN_MAX_PIXELS=abc crashed every command at import, --version included."""
    import subprocess
    import sys
    path = write_image(tmp_path / "p.png", Image(_rand((8, 8, 1))))
    env = dict(os.environ, MAGN_MAX_PIXELS=value)
    version = subprocess.run([sys.executable, "-m", "magncli", "--version"], env=env, capture_output=True, text=True)
    assert version.returncode == 0 and "Traceback" not in version.stderr
    res = subprocess.run([sys.executable, "-m", "magncli", "degrade", str(path), "-t", "denoise", "--sigma", "5",
                          "-o", str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert f"MAGN_MAX_PIXELS must be a positive whole number of pixels, got '{value}'" in res.stderr


def test_max_pixels_accepts_underscores_as_python_does():
    from magncli.images.reading import _max_pixels_setting
    assert _max_pixels_setting("1_000") == 1000 and _max_pixels_setting(None) == 400_000_000


def _png(width, height, depth, color, rows: bytes, *chunks) -> bytes:
    """A PNG written chunk by chunk (an oracle independent of Pillow's and OpenCV's writers)."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + hostile_kit._chunk(b"IHDR", ihdr) + b"".join(chunks)
            + hostile_kit._chunk(b"IDAT", zlib.compress(rows)) + hostile_kit._chunk(b"IEND", b""))


@pytest.mark.parametrize("color, key, samples", [
    (0, (0, 50), [0, 50, 100, 50]),                          # gray: level 50 is transparent
    (2, (0, 10, 0, 20, 0, 30), [10, 20, 30, 1, 2, 3]),       # RGB: (10, 20, 30) is transparent
])
def test_png_trns_transparency_is_kept_as_alpha(tmp_path, color, key, samples):
    """Issue #37: a tRNS chunk of a gray or RGB PNG was dropped, and the transparent
    pixels came back opaque."""
    channels = 1 if color == 0 else 3
    width = len(samples) // channels
    data = _png(width, 1, 8, color, bytes([0, *samples]), hostile_kit._chunk(b"tRNS", bytes(key)))
    image = decode_image(data)
    assert image.channels == channels and image.alpha is not None
    pixels = np.array(samples, np.uint8).reshape(1, width, channels)
    transparent = np.all(pixels == np.array(key[1::2], np.uint8), axis=2)
    assert np.array_equal(image.alpha, np.where(transparent, 0, 255).astype(np.uint8))
    assert np.array_equal(image.pixels, pixels)


def test_16bit_gray_with_alpha_stays_gray_with_alpha(tmp_path):
    """Issue #37: OpenCV expands 16-bit gray + alpha to BGRA, which magn read as color."""
    gray = np.array([[0, 1000, 65535], [7, 300, 40000]], np.uint16)
    alpha = np.array([[65535, 0, 123], [5, 6, 7]], np.uint16)
    rows = b"".join(b"\0" + np.dstack([gray[i], alpha[i]]).astype(">u2").tobytes() for i in range(2))
    path = tmp_path / "ga.png"
    path.write_bytes(_png(3, 2, 16, 4, rows))
    image = read_image(path)
    assert image.channels == 1 and image.bit_depth == 16
    assert np.array_equal(image.pixels[..., 0], gray) and np.array_equal(image.alpha, alpha)
    out = write_image(tmp_path / "back.png", image)
    assert out.read_bytes()[24:26] == bytes([16, 4])          # IHDR: 16-bit gray + alpha
    back = read_image(out)
    assert np.array_equal(back.pixels, image.pixels) and np.array_equal(back.alpha, alpha)


@pytest.mark.parametrize("ext", [".tif", ".png", ".jpg"])
def test_a_bigtiffs_own_tags_are_not_written_as_exif(tmp_path, ext):
    """Issue #37: a BigTIFF's IFD was carried as EXIF: the TIFF output failed after the
    restore (struct.error), and PNG/JPEG outputs got an EXIF block in BigTIFF form
    (b"II+"), which libpng warns about and no reader takes."""
    import tifffile
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, _rand((10, 12, 1))[..., 0], bigtiff=True, extratags=[(0x010F, "s", 0, "MagnCam", True)])
    assert src.read_bytes()[:4] == b"II+\x00"
    image = read_image(src)
    out = write_image(tmp_path / f"out{ext}", image)
    assert np.array_equal(read_image(out).pixels, image.pixels) or ext == ".jpg"
    assert PILImage.open(out).getexif().get(0x010F) == "MagnCam"            # what it says survives
    if ext == ".png":
        data = out.read_bytes()
        at = data.find(b"eXIf")
        assert data[at + 4:at + 8] in (b"II*\x00", b"MM\x00*")              # classic TIFF form
