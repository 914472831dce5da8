//! Turning untrusted image files or bytes into the vision graph's input `[N,64,64,3]` f32
//! (RGB, HWC, 0..255). Owns the size and dimension limits. Invariants: a file larger than
//! `MAX_IMAGE_FILE_BYTES` is refused before it is read, and declared dimensions above
//! `MAX_IMAGE_DIM` are refused from the header, before any pixel is decoded; the decoder also
//! runs under `image::Limits` as a second line.

use crate::error::{ModelError, Result};
use ::image::imageops::FilterType;
use ::image::{ImageReader, Limits, RgbImage};
use ndarray::{Array4, Axis};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Largest image file accepted (16 MiB).
pub const MAX_IMAGE_FILE_BYTES: u64 = 16 << 20;
/// Largest accepted width and height.
pub const MAX_IMAGE_DIM: u32 = 4096;
/// The model's input side length.
pub const MODEL_IMAGE_SIZE: u32 = 64;

/// Loads an image file as a `[1,64,64,3]` model input.
pub fn load_image(path: &Path) -> Result<Array4<f32>> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::Image {
        path: path.to_path_buf(),
        reason: format!("cannot read image: {e}"),
    })?;
    if !meta.is_file() {
        return Err(image_err(path, "not a regular file".into()));
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(image_err(
            path,
            format!(
                "image file is {} bytes, the limit is {MAX_IMAGE_FILE_BYTES} (16 MiB)",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| ModelError::Image {
        path: path.to_path_buf(),
        reason: format!("cannot read image: {e}"),
    })?;
    decode_image(&bytes, path)
}

/// Decodes image bytes (PNG or JPEG) as a `[1,64,64,3]` model input; `label` names the
/// source in errors (a path, or e.g. `command image`).
pub fn decode_image(bytes: &[u8], label: &Path) -> Result<Array4<f32>> {
    let rgb = decode_rgb(bytes, label)?;
    Ok(rgb_to_input(&rgb))
}

/// Decodes image bytes to RGB8 under the limits (no resizing).
pub fn decode_rgb(bytes: &[u8], label: &Path) -> Result<RgbImage> {
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(image_err(
            label,
            format!(
                "image is {} bytes, the limit is {MAX_IMAGE_FILE_BYTES} (16 MiB)",
                bytes.len()
            ),
        ));
    }
    let reader = || -> Result<ImageReader<Cursor<&[u8]>>> {
        let r = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| image_err(label, format!("cannot read image: {e}")))?;
        if r.format().is_none() {
            return Err(image_err(
                label,
                "not an image in a supported format (PNG or JPEG)".into(),
            ));
        }
        Ok(r)
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| image_err(label, format!("cannot read image header: {e}")))?;
    check_dimensions(w, h).map_err(|reason| image_err(label, reason))?;
    let mut r = reader()?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_DIM);
    limits.max_image_height = Some(MAX_IMAGE_DIM);
    limits.max_alloc = Some(256 << 20);
    r.limits(limits);
    let img = r
        .decode()
        .map_err(|e| image_err(label, format!("cannot decode image: {e}")))?;
    Ok(img.to_rgb8())
}

/// Checks declared dimensions against the limits.
pub fn check_dimensions(w: u32, h: u32) -> std::result::Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image has empty dimensions {w}x{h}"));
    }
    if w > MAX_IMAGE_DIM || h > MAX_IMAGE_DIM {
        return Err(format!(
            "image dimensions {w}x{h} exceed the {MAX_IMAGE_DIM}x{MAX_IMAGE_DIM} limit"
        ));
    }
    Ok(())
}

/// Converts an RGB image to a `[1,64,64,3]` input, resizing (Triangle filter) when needed.
pub fn rgb_to_input(img: &RgbImage) -> Array4<f32> {
    let s = MODEL_IMAGE_SIZE;
    let resized;
    let img = if img.width() == s && img.height() == s {
        img
    } else {
        resized = ::image::imageops::resize(img, s, s, FilterType::Triangle);
        &resized
    };
    let data: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v)).collect();
    Array4::from_shape_vec((1, s as usize, s as usize, 3), data)
        .expect("an RGB8 image of 64x64 has 64*64*3 values")
}

/// Stacks RGB images into one `[N,64,64,3]` input.
pub fn images_to_input(imgs: &[RgbImage]) -> Array4<f32> {
    let s = MODEL_IMAGE_SIZE as usize;
    if imgs.is_empty() {
        return Array4::zeros((0, s, s, 3));
    }
    let views: Vec<Array4<f32>> = imgs.iter().map(rgb_to_input).collect();
    let refs: Vec<_> = views.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &refs).expect("all images are [1,64,64,3]")
}

fn image_err(path: &Path, reason: String) -> ModelError {
    ModelError::Image {
        path: PathBuf::from(path),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_sized_image_keeps_pixel_values() {
        let mut img = RgbImage::new(64, 64);
        img.put_pixel(3, 2, ::image::Rgb([10, 20, 255]));
        let a = rgb_to_input(&img);
        assert_eq!(a.shape(), &[1, 64, 64, 3]);
        assert_eq!(
            [a[[0, 2, 3, 0]], a[[0, 2, 3, 1]], a[[0, 2, 3, 2]]],
            [10.0, 20.0, 255.0]
        );
    }

    #[test]
    fn other_sizes_are_resized_to_64() {
        let img = RgbImage::from_pixel(200, 100, ::image::Rgb([7, 7, 7]));
        let a = rgb_to_input(&img);
        assert_eq!(a.shape(), &[1, 64, 64, 3]);
        assert!((a[[0, 30, 30, 1]] - 7.0).abs() < 0.5);
    }

    #[test]
    fn dimensions_over_the_limit_are_refused() {
        assert!(check_dimensions(4096, 4096).is_ok());
        let err = check_dimensions(100_000, 100_000).unwrap_err();
        assert!(
            err.contains("100000x100000") && err.contains("4096"),
            "{err}"
        );
        assert!(check_dimensions(0, 5).is_err());
    }

    #[test]
    fn non_image_bytes_are_refused_with_the_label() {
        let err = decode_image(b"hello, not an image", Path::new("x.png"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.png:") && err.contains("not an image"),
            "{err}"
        );
    }
}
