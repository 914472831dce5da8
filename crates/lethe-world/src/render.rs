//! The procedural portrait renderer: `render(identity, seed)` -> 64x64 RGB.
//!
//! The identity fixes what the person looks like (face shape, hair, skin, eyes, accessory);
//! the seed fixes everything else (nuisance): background colour and pattern, position,
//! scale, rotation, shirt colour, an occluding blob, lighting direction and strength, and
//! pixel noise. Invariant: the output is a pure function of `(identity, seed)`.

use crate::identity::{Attributes, Identity, Stranger};
use crate::rng::Rng;
use image::RgbImage;

/// Width and height of every rendered image, in pixels.
pub const IMAGE_SIZE: u32 = 64;
const N: usize = IMAGE_SIZE as usize;

type Rgb = [f32; 3];

fn hair_rgb(c: &str) -> Rgb {
    match c {
        "black" => [25., 20., 20.],
        "brown" => [100., 60., 30.],
        "blonde" => [230., 200., 110.],
        "red" => [180., 60., 25.],
        "grey" => [140., 140., 140.],
        _ => [240., 240., 235.],
    }
}

fn skin_rgb(c: &str) -> Rgb {
    match c {
        "pale" => [250., 225., 210.],
        "light" => [230., 190., 160.],
        "tan" => [190., 140., 95.],
        _ => [110., 70., 45.],
    }
}

fn eye_rgb(c: &str) -> Rgb {
    match c {
        "blue" => [40., 90., 220.],
        "green" => [40., 160., 60.],
        "brown" => [90., 50., 20.],
        _ => [120., 130., 140.],
    }
}

fn face_aspect(shape: &str) -> (f32, f32) {
    match shape {
        "round" => (1.0, 1.0),
        "oval" => (0.85, 1.1),
        "square" => (1.0, 0.95),
        _ => (0.72, 1.22),
    }
}

/// A float canvas plus the seed's geometry (image coordinates -> face coordinates u, v).
struct Canvas {
    px: Vec<Rgb>,
    cx: f32,
    cy: f32,
    scale: f32,
    cos: f32,
    sin: f32,
}

impl Canvas {
    fn uv(&self, x: usize, y: usize) -> (f32, f32) {
        let dx = x as f32 - self.cx;
        let dy = y as f32 - self.cy;
        (
            (self.cos * dx + self.sin * dy) / self.scale,
            (-self.sin * dx + self.cos * dy) / self.scale,
        )
    }

    /// Paints `rgb` wherever `inside(u, v)` holds (face coordinates).
    fn paint(&mut self, rgb: Rgb, inside: impl Fn(f32, f32) -> bool) {
        for y in 0..N {
            for x in 0..N {
                let (u, v) = self.uv(x, y);
                if inside(u, v) {
                    self.px[y * N + x] = rgb;
                }
            }
        }
    }
}

fn ell(u: f32, v: f32, cu: f32, cv: f32, ru: f32, rv: f32) -> bool {
    let a = (u - cu) / ru;
    let b = (v - cv) / rv;
    a * a + b * b <= 1.0
}

/// Renders one portrait of `identity` under nuisance drawn from `seed`.
pub fn render(identity: &Identity, seed: u64) -> RgbImage {
    render_person(identity.id as u64, &identity.attributes, seed)
}

/// Renders one portrait of a stranger under nuisance drawn from `seed`.
pub fn render_stranger(stranger: &Stranger, seed: u64) -> RgbImage {
    render_person(stranger.render_key(), &stranger.attributes, seed)
}

/// Renders a person with `attributes`; `key` (an identity's id, a stranger's render key)
/// and `seed` fix the nuisance.
fn render_person(key: u64, attributes: &Attributes, seed: u64) -> RgbImage {
    let mut rng = Rng::from_keys(&[key, seed, 777]);
    let px = background(&mut rng);
    let th = rng.uniform(-15.0, 15.0).to_radians();
    let mut c = Canvas {
        px,
        cx: 32.0 + rng.uniform(-6.0, 6.0),
        cy: 34.0 + rng.uniform(-5.0, 5.0),
        scale: rng.uniform(0.8, 1.15),
        cos: th.cos(),
        sin: th.sin(),
    };
    let shirt = [
        rng.uniform(30., 220.),
        rng.uniform(30., 220.),
        rng.uniform(30., 220.),
    ];
    draw_person(&mut c, attributes, shirt);
    occluder(&mut c.px, &mut rng);
    finish(c.px, &mut rng)
}

fn background(rng: &mut Rng) -> Vec<Rgb> {
    let bg1 = [
        rng.uniform(0., 255.),
        rng.uniform(0., 255.),
        rng.uniform(0., 255.),
    ];
    let bg2 = [
        rng.uniform(0., 255.),
        rng.uniform(0., 255.),
        rng.uniform(0., 255.),
    ];
    let pattern = rng.below(4);
    let (per, ang) = (
        rng.uniform(4.0, 12.0),
        rng.uniform(0.0, std::f32::consts::TAU),
    );
    let mut px = vec![[0.0; 3]; N * N];
    for y in 0..N {
        for x in 0..N {
            let (xf, yf) = (x as f32, y as f32);
            let m = match pattern {
                0 => 0.0,
                1 => {
                    let t = (xf * ang.cos() + yf * ang.sin()) * std::f32::consts::TAU / per;
                    if t.sin() > 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                }
                2 => {
                    let p = per.floor().max(4.0);
                    (((xf / p).floor() + (yf / p).floor()) as i64 % 2) as f32
                }
                _ => (((xf - 32.0) * ang.cos() + (yf - 32.0) * ang.sin()) / 64.0 + 0.5)
                    .clamp(0.0, 1.0),
            };
            for k in 0..3 {
                px[y * N + x][k] = bg1[k] * (1.0 - m) + bg2[k] * m;
            }
        }
    }
    px
}

fn draw_person(c: &mut Canvas, a: &Attributes, shirt: Rgb) {
    let (fa, fb) = face_aspect(a.face);
    let (fru, frv) = (14.0 * fa, 16.0 * fb);
    let square = a.face == "square";
    let face = move |u: f32, v: f32| {
        if square {
            u.abs() <= fru * 0.92 && v.abs() <= frv * 0.92
        } else {
            ell(u, v, 0.0, 0.0, fru, frv)
        }
    };
    let hair = hair_rgb(a.hair_colour);
    let skin = skin_rgb(a.skin);
    let style = a.hair_style;

    c.paint(shirt, |u, v| ell(u, v, 0.0, frv + 14.0, 24.0, 12.0));
    if style == "long" {
        c.paint(hair, |u, v| {
            (u.abs() <= fru + 4.0 && v >= -frv - 3.0 && v <= frv + 8.0 && !face(u, v))
                || ell(u, v, 0.0, -frv * 0.35, fru + 4.0, frv * 0.8)
        });
    }
    c.paint(skin, |u, v| {
        u.abs() <= 5.0 && v > frv * 0.6 && v <= frv + 6.0
    });
    c.paint(skin, face);
    c.paint(skin, |u, v| {
        ell(u, v, -fru - 1.0, 0.0, 3.0, 4.5) || ell(u, v, fru + 1.0, 0.0, 3.0, 4.5)
    });
    match style {
        "short" => c.paint(hair, |u, v| {
            ell(u, v, 0.0, -frv * 0.45, fru + 1.5, frv * 0.7) && v < -frv * 0.45
        }),
        "long" => c.paint(hair, |u, v| {
            ell(u, v, 0.0, -frv * 0.45, fru + 2.0, frv * 0.72) && v < -frv * 0.4
        }),
        "curly" => c.paint(hair, |u, v| {
            v < -frv * 0.1
                && (0..7).any(|k| {
                    let t = std::f32::consts::PI * (0.05 + 0.9 * k as f32 / 6.0);
                    ell(
                        u,
                        v,
                        -t.cos() * (fru + 1.0),
                        -t.sin() * frv * 0.95,
                        5.0,
                        5.0,
                    )
                })
        }),
        "mohawk" => c.paint(hair, |u, v| {
            u.abs() <= 3.0 && v < -frv * 0.5 && v > -frv - 7.0
        }),
        _ => {}
    }
    let (ey, ex) = (-frv * 0.12, fru * 0.42);
    let iris = eye_rgb(a.eyes);
    for sx in [-1.0f32, 1.0] {
        c.paint([250., 250., 250.], |u, v| ell(u, v, sx * ex, ey, 3.6, 2.6));
        c.paint(iris, |u, v| ell(u, v, sx * ex, ey, 2.0, 2.0));
        c.paint([10., 10., 10.], |u, v| ell(u, v, sx * ex, ey, 0.8, 0.8));
    }
    let nose = [skin[0] * 0.8, skin[1] * 0.8, skin[2] * 0.8];
    c.paint(nose, |u, v| u.abs() <= 1.0 && v > ey + 2.0 && v < frv * 0.3);
    c.paint([150., 40., 50.], |u, v| {
        ell(u, v, 0.0, frv * 0.55, fru * 0.35, 1.4)
    });
    match a.accessory {
        "glasses" => c.paint([20., 20., 20.], |u, v| {
            let ring = [-1.0f32, 1.0].iter().any(|sx| {
                let (p, q) = ((u - sx * ex) / 4.6, (v - ey) / 3.8);
                let r2 = p * p + q * q;
                (0.55..=1.0).contains(&r2)
            });
            ring || (u.abs() <= ex - 4.0 && (v - ey).abs() <= 0.7)
        }),
        "hat" => {
            let hat = [60., 40., 120.];
            c.paint(hat, |u, v| {
                u.abs() <= fru + 6.0 && v >= -frv * 0.78 - 2.0 && v <= -frv * 0.78 + 1.0
            });
            c.paint(hat, |u, v| {
                u.abs() <= fru * 0.8 && v >= -frv - 10.0 && v < -frv * 0.78 - 2.0
            });
        }
        "earring" => c.paint([255., 215., 0.], |u, v| {
            ell(u, v, -(fru + 1.5), 5.5, 1.8, 1.8) || ell(u, v, fru + 1.5, 5.5, 1.8, 1.8)
        }),
        _ => {}
    }
}

/// A random blob in image coordinates that may hide part of the face (70% of images).
fn occluder(px: &mut [Rgb], rng: &mut Rng) {
    let present = rng.unit() < 0.7;
    let (bx, by, br, asp) = (
        rng.uniform(0., 64.),
        rng.uniform(0., 64.),
        rng.uniform(4., 10.),
        rng.uniform(0.6, 1.4),
    );
    let col = [
        rng.uniform(0., 255.),
        rng.uniform(0., 255.),
        rng.uniform(0., 255.),
    ];
    if !present {
        return;
    }
    for y in 0..N {
        for x in 0..N {
            let (p, q) = ((x as f32 - bx) / br, (y as f32 - by) / (br * asp));
            if p * p + q * q <= 1.0 {
                px[y * N + x] = col;
            }
        }
    }
}

/// Lighting (brightness and a directional gradient), Gaussian pixel noise, quantisation.
fn finish(px: Vec<Rgb>, rng: &mut Rng) -> RgbImage {
    let bright = rng.uniform(0.7, 1.3);
    let la = rng.uniform(0.0, std::f32::consts::TAU);
    let sigma = rng.uniform(3.0, 15.0);
    let mut img = RgbImage::new(IMAGE_SIZE, IMAGE_SIZE);
    for y in 0..N {
        for x in 0..N {
            let g =
                1.0 + 0.25 * (((x as f32 - 32.0) * la.cos() + (y as f32 - 32.0) * la.sin()) / 32.0);
            let p = px[y * N + x];
            let mut out = [0u8; 3];
            for k in 0..3 {
                let val = p[k] * bright * g + rng.normal() * sigma;
                out[k] = val.round().clamp(0.0, 255.0) as u8;
            }
            img.put_pixel(x as u32, y as u32, image::Rgb(out));
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::identities;

    #[test]
    fn rendering_is_deterministic() {
        let i = &identities()[3];
        assert_eq!(render(i, 42).as_raw(), render(i, 42).as_raw());
        assert_ne!(render(i, 42).as_raw(), render(i, 43).as_raw());
    }

    #[test]
    fn different_identities_look_different_under_the_same_seed() {
        let ids = identities();
        let a = render(&ids[0], 7);
        let b = render(&ids[1], 7);
        let diff: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y) as u64)
            .sum();
        assert!(
            diff > 10_000,
            "identities 0 and 1 rendered nearly the same ({diff})"
        );
    }

    #[test]
    fn images_have_the_documented_size() {
        let img = render(&identities()[0], 0);
        assert_eq!(img.dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
    }
}
