//! Image header checks: format and dimensions read from the header only, before any pixel is
//! decoded (a 100-byte PNG can declare 100k x 100k pixels), plus a bounded decoder for callers.
//!
//! This is the one module that needs `std` (the `image` crate reads through `std::io`); the
//! rest of the crate does no I/O and could move to `no_std + alloc`.
//!
//! Invariant: `check_header` never decodes pixel data; `decode_bounded` never allocates more
//! than `MAX_DECODE_ALLOC` bytes.

use crate::Rejection;
use image::{ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// Largest accepted width or height.
pub const MAX_IMAGE_SIDE: u32 = 4096;
/// Largest accepted pixel count (16 Mpixel).
pub const MAX_IMAGE_PIXELS: u64 = 16 << 20;
/// Allocation cap for `decode_bounded`.
pub const MAX_DECODE_ALLOC: u64 = 256 << 20;

/// Format and dimensions of an image, read from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// Reads format and dimensions from the header of `bytes`; `index` names the image in the
/// rejection (0 = forget image, 1.. = verification images). Only PNG and JPEG are accepted.
pub fn check_header(bytes: &[u8], index: usize) -> Result<ImageInfo, Rejection> {
    let not_image = || Rejection::NotAnImage { index };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| not_image())?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg)) => f,
        _ => return Err(not_image()),
    };
    // Reading the header allocates nothing in proportion to the declared size, so lift the
    // decoder's own limits here and apply ours to the declared dimensions below: that way an
    // absurd header is reported as such rather than as "not an image".
    reader.no_limits();
    let (width, height) = reader.into_dimensions().map_err(|_| not_image())?;
    if width == 0 || height == 0 {
        return Err(not_image());
    }
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS
    {
        return Err(Rejection::ImageDimensions {
            index,
            width,
            height,
        });
    }
    Ok(ImageInfo {
        format,
        width,
        height,
    })
}

/// Checks the header, then decodes with the decoder's own dimension and allocation limits
/// set, for the agent to turn a verified command's image into pixels.
pub fn decode_bounded(bytes: &[u8], index: usize) -> Result<image::DynamicImage, Rejection> {
    let info = check_header(bytes, index)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), info.format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(|_| Rejection::NotAnImage { index })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small real PNG.
    pub(crate) fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    /// A PNG whose IHDR declares `w` x `h` (CRC fixed up), followed by no pixel data.
    pub(crate) fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        let mut p = png(1, 1);
        // IHDR data starts at byte 16: width, height (big-endian).
        p[16..20].copy_from_slice(&w.to_be_bytes());
        p[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        p
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn a_small_png_passes_with_its_dimensions() {
        let info = check_header(&png(64, 48), 0).unwrap();
        assert_eq!((info.width, info.height), (64, 48));
        assert_eq!(decode_bounded(&png(3, 2), 0).unwrap().width(), 3);
    }

    #[test]
    fn a_header_claiming_huge_dimensions_is_refused_before_decoding() {
        assert_eq!(
            check_header(&png_claiming(100_000, 100_000), 2).unwrap_err(),
            Rejection::ImageDimensions {
                index: 2,
                width: 100_000,
                height: 100_000
            }
        );
        // Each side within bounds, but too many pixels together.
        assert_eq!(
            check_header(&png_claiming(4096, 4097), 0)
                .unwrap_err()
                .code(),
            "image-dimensions"
        );
    }

    #[test]
    fn dimensions_up_to_the_caps_pass_and_one_pixel_more_on_a_side_is_refused() {
        let info = check_header(&png_claiming(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), 0).unwrap();
        assert_eq!((info.width, info.height), (4096, 4096));
        assert_eq!(
            u64::from(info.width) * u64::from(info.height),
            MAX_IMAGE_PIXELS
        );
        for (w, h) in [(MAX_IMAGE_SIDE + 1, 1), (1, MAX_IMAGE_SIDE + 1)] {
            assert_eq!(
                check_header(&png_claiming(w, h), 3).unwrap_err(),
                Rejection::ImageDimensions {
                    index: 3,
                    width: w,
                    height: h
                }
            );
        }
    }

    /// A small real JPEG whose frame header (SOF0) is patched to declare `w` x `h`.
    fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg)
            .unwrap();
        let sof = out.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        // Marker, length (2), precision (1), then height and width (big-endian).
        out[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        out[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
        out
    }

    /// (The PNG and JPEG decoders refuse a zero side themselves; the check below them stays
    /// for any format added later.)
    #[test]
    fn an_image_without_width_or_height_is_not_an_image() {
        for (w, h) in [(0, 5), (5, 0)] {
            assert_eq!(
                check_header(&png_claiming(w, h), 0).unwrap_err(),
                Rejection::NotAnImage { index: 0 },
                "{w}x{h}"
            );
            assert_eq!(
                check_header(&jpeg_claiming(w as u16, h as u16), 0).unwrap_err(),
                Rejection::NotAnImage { index: 0 },
                "jpeg {w}x{h}"
            );
        }
        assert_eq!(
            check_header(&jpeg_claiming(8, 8), 0).unwrap().format,
            ImageFormat::Jpeg
        );
    }

    #[test]
    fn bytes_that_are_not_an_image_are_refused() {
        for bad in [
            &b""[..],
            b"hello world",
            b"GIF89a\x01\x00\x01\x00",
            &png(4, 4)[..20],
        ] {
            assert_eq!(
                check_header(bad, 1).unwrap_err(),
                Rejection::NotAnImage { index: 1 }
            );
        }
    }
}
