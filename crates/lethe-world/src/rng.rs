//! A tiny deterministic random number generator (SplitMix64).
//!
//! The world must render the same pixels for the same `(identity, seed)` on every platform
//! and every release, forever: training data, committed fixtures and evaluation splits depend
//! on it. So we own the generator instead of depending on a crate whose streams may change.

/// SplitMix64: 64-bit state, passes BigCrush, trivially portable.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for a stream identified by several keys (e.g. identity, seed, purpose).
    pub fn from_keys(keys: &[u64]) -> Self {
        let mut r = Rng {
            state: 0x9E37_79B9_7F4A_7C15,
        };
        for &k in keys {
            r.state ^= k.wrapping_mul(0xD1B5_4A32_D192_ED03);
            r.next_u64();
        }
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [0, n). `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-7);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_keys_give_the_same_stream() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::from_keys(&[3, 7]);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::from_keys(&[3, 7]);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut c = Rng::from_keys(&[7, 3]);
        assert_ne!(a[0], c.next_u64());
    }

    #[test]
    fn stream_is_pinned_across_releases() {
        // Fixtures and the trained model depend on these exact numbers.
        let mut r = Rng::from_keys(&[0]);
        assert_eq!(r.next_u64(), PINNED_FIRST);
    }

    const PINNED_FIRST: u64 = 487_617_019_471_545_679;

    #[test]
    fn unit_is_in_range_and_normal_is_centred() {
        let mut r = Rng::from_keys(&[1]);
        let mut sum = 0.0f64;
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            sum += r.normal() as f64;
        }
        assert!((sum / 10_000.0).abs() < 0.05);
    }
}
