//! Augmented views of the single image.
//!
//! SIU trains on one image. Showing the optimizer label-preserving views of that same image
//! (what a camera would see a moment later, from a little further, in other light, with
//! something in front) makes the forgetting hold on *other* pictures of the concept instead
//! of on that one pixel pattern. Two strengths:
//! - [`Strength::Light`]: small shifts, mirror, brightness and noise (the first product's
//!   views, kept for `Method::SiuPaper`);
//! - [`Strength::Camera`]: rotation, scale and shift together (bilinear), mirror, per-channel
//!   gain and contrast, noise, and an occluding blob in half the views. Generic camera
//!   nuisance, not the synthetic world's renderer: nothing here knows how the world draws.
//!
//! View 0 is always the original image. Invariant: deterministic for a given seed; values
//! stay in 0..255.

use crate::facets::Chooser;
use ndarray::{Array3, ArrayView3};

/// How far views may stray from the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Strength {
    Light,
    Camera,
}

/// `n` views of `image` ([H,W,3], 0..255) at `strength`: view 0 is the image itself.
pub fn views_at(
    image: ArrayView3<f32>,
    n: usize,
    seed: u64,
    strength: Strength,
) -> Vec<Array3<f32>> {
    match strength {
        Strength::Light => views(image, n, seed),
        Strength::Camera => camera_views(image, n, seed),
    }
}

fn camera_views(image: ArrayView3<f32>, n: usize, seed: u64) -> Vec<Array3<f32>> {
    let mut c = Chooser::new(seed.wrapping_mul(131).wrapping_add(11));
    let mut out = vec![image.to_owned()];
    let (h, w, ch) = image.dim();
    while out.len() < n {
        let angle = (c.unit() - 0.5) * 30f32.to_radians();
        let scale = 0.85 + 0.3 * c.unit();
        let (dx, dy) = ((c.unit() - 0.5) * 12.0, (c.unit() - 0.5) * 10.0);
        let mirror = c.unit() < 0.5;
        let gain: Vec<f32> = (0..ch).map(|_| 0.8 + 0.4 * c.unit()).collect();
        let contrast = 0.8 + 0.4 * c.unit();
        let sigma = 8.0 * c.unit();
        let blob = (c.unit() < 0.5).then(|| {
            (
                c.unit() * w as f32,
                c.unit() * h as f32,
                4.0 + 6.0 * c.unit(),
                [255.0 * c.unit(), 255.0 * c.unit(), 255.0 * c.unit()],
            )
        });
        let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
        let (cos, sin) = (angle.cos(), angle.sin());
        let mean = image.mean().unwrap_or(128.0);
        let mut v = Array3::zeros((h, w, ch));
        for y in 0..h {
            for x in 0..w {
                // Output pixel -> source pixel: undo shift, scale, rotation, mirror.
                let (px, py) = ((x as f32 - cx - dx) / scale, (y as f32 - cy - dy) / scale);
                let sx = cos * px + sin * py + cx;
                let sy = -sin * px + cos * py + cy;
                let sx = if mirror { w as f32 - 1.0 - sx } else { sx };
                for k in 0..ch {
                    let mut val = bilinear(image, sx, sy, k);
                    val = (val - mean) * contrast + mean;
                    val *= gain[k];
                    if let Some((bx, by, br, col)) = blob {
                        let (p, q) = ((x as f32 - bx) / br, (y as f32 - by) / br);
                        if p * p + q * q <= 1.0 {
                            val = col[k.min(2)];
                        }
                    }
                    let noise = (c.unit() + c.unit() + c.unit() - 1.5) * 2.0 * sigma;
                    v[[y, x, k]] = (val + noise).clamp(0.0, 255.0);
                }
            }
        }
        out.push(v);
    }
    out
}

/// Bilinear sample of channel `k` at (x, y), clamped to the edge.
fn bilinear(img: ArrayView3<f32>, x: f32, y: f32, k: usize) -> f32 {
    let (h, w, _) = img.dim();
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let top = img[[y0, x0, k]] * (1.0 - fx) + img[[y0, x1, k]] * fx;
    let bottom = img[[y1, x0, k]] * (1.0 - fx) + img[[y1, x1, k]] * fx;
    top * (1.0 - fy) + bottom * fy
}

/// `n` light views of `image` ([H,W,3], 0..255): view 0 is the image itself.
pub fn views(image: ArrayView3<f32>, n: usize, seed: u64) -> Vec<Array3<f32>> {
    let mut c = Chooser::new(seed.wrapping_mul(31).wrapping_add(7));
    let mut out = vec![image.to_owned()];
    while out.len() < n {
        let dx = c.below(9) as i64 - 4;
        let dy = c.below(9) as i64 - 4;
        let mirror = c.unit() < 0.5;
        let gain = 0.85 + 0.3 * c.unit();
        let sigma = 6.0 * c.unit();
        out.push(view(image, dx, dy, mirror, gain, sigma, &mut c));
    }
    out
}

fn view(
    img: ArrayView3<f32>,
    dx: i64,
    dy: i64,
    mirror: bool,
    gain: f32,
    sigma: f32,
    c: &mut Chooser,
) -> Array3<f32> {
    let (h, w, ch) = img.dim();
    let clampi = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
    Array3::from_shape_fn((h, w, ch), |(y, x, k)| {
        let sx = if mirror {
            w as i64 - 1 - x as i64
        } else {
            x as i64
        } - dx;
        let sy = y as i64 - dy;
        let v = img[[clampi(sy, h), clampi(sx, w), k]] * gain;
        // cheap approximately-normal noise: sum of uniforms
        let n = (c.unit() + c.unit() + c.unit() - 1.5) * 2.0 * sigma;
        (v + n).clamp(0.0, 255.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_views_are_deterministic_in_range_and_differ_from_the_image() {
        let img =
            Array3::from_shape_fn((16, 16, 3), |(y, x, k)| ((y * 13 + x * 7 + k) % 256) as f32);
        let a = views_at(img.view(), 5, 3, Strength::Camera);
        assert_eq!(a, views_at(img.view(), 5, 3, Strength::Camera));
        assert_eq!(a[0], img);
        assert!(a[1..].iter().all(|v| v != img));
        assert!(a
            .iter()
            .all(|v| v.iter().all(|p| (0.0..=255.0).contains(p))));
        assert_ne!(a, views_at(img.view(), 5, 4, Strength::Camera));
    }

    #[test]
    fn bilinear_reads_pixels_exactly_and_interpolates_between_them() {
        let img = Array3::from_shape_fn((2, 2, 1), |(y, x, _)| (10 * y + x) as f32);
        assert_eq!(bilinear(img.view(), 1.0, 0.0, 0), 1.0);
        assert_eq!(bilinear(img.view(), 0.5, 0.5, 0), 5.5);
        assert_eq!(
            bilinear(img.view(), -3.0, 9.0, 0),
            10.0,
            "clamped to the edge"
        );
    }

    #[test]
    fn first_view_is_the_image_and_views_are_deterministic() {
        let img = Array3::from_shape_fn((8, 8, 3), |(y, x, k)| (y * 30 + x * 3 + k) as f32);
        let a = views(img.view(), 4, 9);
        let b = views(img.view(), 4, 9);
        assert_eq!(a.len(), 4);
        assert_eq!(a[0], img);
        assert_eq!(a, b);
        assert_ne!(a[1], img);
        assert!(a
            .iter()
            .all(|v| v.iter().all(|p| (0.0..=255.0).contains(p))));
    }
}
