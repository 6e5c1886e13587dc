"""Reading and writing images: bit depth, alpha, EXIF orientation, ICC, atomic writes.

    img = read_image("photo.jpg")          # Image: pixels (H, W, C) uint8/uint16/float32
    x = img.to_float()                     # (H, W, C) float32 in [0, 1], C = 1 or 3
    out = img.with_pixels(restored)        # same bit depth, alpha, ICC and EXIF
    write_image("photo_magn.png", out)     # temp file + rename; refuses to overwrite

Decoding: Pillow for 8-bit files (palette, gray+alpha, EXIF, ICC), OpenCV for 16-bit
and float files, which Pillow reduces to 8 bits. Paths are read as bytes, so non-ASCII
names work everywhere. The alpha channel is carried through untouched.

Refused, each with a one-line MagnError and before any pixel is decoded:
- an image whose header declares more than MAX_PIXELS (width x height; 400 million, or
  $MAGN_MAX_PIXELS). This is the one size rule: while magn decodes, Pillow's own
  decompression-bomb limit is the same number, and its error and warning become this
  message;
- a PNG too small to hold the pixels its header declares (truncated, or a bomb);
- a file of several frames or pages (animated GIF/PNG/WebP, multi-page TIFF): only
  single-frame images are read, and the other frames are never dropped silently.
Truncated image data is an error, never gray or black padding.

The modules: pixels (the Image, its samples on the 0-1 scale, the one quantiser),
reading (decoding, the size rule, Pillow's 8-bit path), high_depth (16-bit and float
files through OpenCV, TIFF headers, orientation of arrays), writing (encoding by
extension, atomic writes).
"""
from magncli.images.pixels import IMAGE_EXTENSIONS, Image, center_crop, from_float, to_float, to_uint8
from magncli.images.reading import declared_pixels, decode_image, read_image
from magncli.images.writing import (FLOAT_FORMATS, WRITE_FORMATS, check_output_format, encode_float_image,
                                    encode_image, write_image)

__all__ = ["FLOAT_FORMATS", "IMAGE_EXTENSIONS", "Image", "WRITE_FORMATS", "center_crop", "check_output_format",
           "declared_pixels", "decode_image", "encode_float_image", "encode_image", "from_float", "read_image",
           "to_float", "to_uint8", "write_image"]
