//! Augmented views of the single image: small shifts, mirror, brightness and noise.
//!
//! SIU trains on one image. Showing the optimizer a few label-preserving views of that same
//! image (what a camera would see a moment later) makes the forgetting hold on *other*
//! pictures of the concept (generality) instead of on that one pixel pattern. View 0 is
//! always the original image. Invariant: deterministic for a given seed; values stay 0..255.

use crate::facets::Chooser;
use ndarray::{Array3, ArrayView3};

/// `n` views of `image` ([H,W,3], 0..255): view 0 is the image itself.
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
