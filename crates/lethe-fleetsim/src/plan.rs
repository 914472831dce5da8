//! Which simulated devices fail: shares of the fleet whose updates fail or roll back, spread
//! evenly over the device order (device `i` is in a share `s` when `floor((i+1)s)` passes
//! `floor(i s)`), so every prefix of the fleet holds its share, as a rollout meets it.

use crate::engine::Outcome;

/// Shares of the fleet that fail and that roll back; the rest commit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutcomePlan {
    /// Share of devices whose update fails (0..=1).
    pub fail: f64,
    /// Share of devices whose verification fails, so they roll back (0..=1).
    pub roll_back: f64,
}

/// Whether device `i` is one of an evenly spread share `s`.
fn picked(i: usize, s: f64) -> bool {
    let s = s.clamp(0.0, 1.0);
    ((i + 1) as f64 * s).floor() > (i as f64 * s).floor()
}

impl OutcomePlan {
    /// How device `i`'s updates end (a device in both shares fails).
    pub fn outcome(&self, i: usize) -> Outcome {
        if picked(i, self.fail) {
            Outcome::Fail
        } else if picked(i, self.roll_back) {
            Outcome::RollBack
        } else {
            Outcome::Commit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenth_failing_is_every_tenth_device_and_holds_in_every_prefix() {
        let p = OutcomePlan {
            fail: 0.1,
            roll_back: 0.0,
        };
        let failing: Vec<usize> = (0..1000)
            .filter(|&i| p.outcome(i) == Outcome::Fail)
            .collect();
        assert_eq!(failing.len(), 100);
        assert_eq!(&failing[..3], &[9, 19, 29]);
        for n in [50, 100, 500] {
            assert_eq!(failing.iter().filter(|&&i| i < n).count(), n / 10);
        }
    }

    #[test]
    fn no_share_commits_everywhere_and_a_full_share_fails_everywhere() {
        let none = OutcomePlan::default();
        assert!((0..100).all(|i| none.outcome(i) == Outcome::Commit));
        let all = OutcomePlan {
            fail: 1.0,
            roll_back: 0.0,
        };
        assert!((0..100).all(|i| all.outcome(i) == Outcome::Fail));
    }

    #[test]
    fn roll_backs_take_their_own_share() {
        let p = OutcomePlan {
            fail: 0.0,
            roll_back: 0.25,
        };
        let n = (0..100)
            .filter(|&i| p.outcome(i) == Outcome::RollBack)
            .count();
        assert_eq!(n, 25);
    }
}
