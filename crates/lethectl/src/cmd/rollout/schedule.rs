//! The pace of a rollout and when to stop it, as pure functions of what happened so far
//! (the model is AWS IoT Jobs' rollout and abort configuration):
//!
//! - [`Rate`]: devices per minute, a base rate multiplied by `factor` each time another
//!   `every` devices were notified (or succeeded), capped at a maximum;
//! - [`Pacer`]: a token bucket that turns the rate into deliveries per tick;
//! - [`Waves`]: deliveries grouped into waves, a new wave at each rate step and at most a
//!   minute's worth of devices in one;
//! - [`Abort`]: stop once failed + rolled back + rejected exceed a share of the executed,
//!   after a minimum number executed.

/// What increases the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncreaseOn {
    /// Devices the command was delivered to.
    Notified,
    /// Devices that committed.
    Succeeded,
}

/// Devices per minute, with an optional exponential increase.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rate {
    pub base_per_min: f64,
    /// Multiplier per increase; 1 = a constant rate.
    pub factor: f64,
    /// Increase after every `every` devices notified or succeeded; 0 = never.
    pub every: usize,
    pub on: IncreaseOn,
    /// Upper bound of the rate.
    pub max_per_min: f64,
}

impl Rate {
    /// A constant rate.
    pub fn constant(per_min: f64) -> Rate {
        Rate {
            base_per_min: per_min,
            factor: 1.0,
            every: 0,
            on: IncreaseOn::Notified,
            max_per_min: per_min,
        }
    }

    /// The increase step reached after `notified` deliveries and `succeeded` commits.
    pub fn step(&self, notified: usize, succeeded: usize) -> u32 {
        if self.every == 0 || self.factor <= 1.0 {
            return 0;
        }
        let n = match self.on {
            IncreaseOn::Notified => notified,
            IncreaseOn::Succeeded => succeeded,
        };
        u32::try_from(n / self.every).unwrap_or(u32::MAX)
    }

    /// Devices per minute at increase step `k`.
    pub fn per_min(&self, k: u32) -> f64 {
        let r = self.base_per_min * self.factor.powi(i32::try_from(k).unwrap_or(i32::MAX));
        r.min(self.max_per_min)
    }
}

/// Turns a rate into a number of deliveries per tick (a token bucket holding at most a
/// second's worth, and at least one, so the first device goes at once).
#[derive(Debug, Clone)]
pub struct Pacer {
    tokens: f64,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer { tokens: 1.0 }
    }
}

impl Pacer {
    /// Adds `dt_s` seconds' worth of deliveries at `per_min`.
    pub fn refill(&mut self, per_min: f64, dt_s: f64) {
        let per_s = per_min / 60.0;
        self.tokens = (self.tokens + per_s * dt_s).min(per_s.max(1.0));
    }

    /// Takes up to `want` deliveries; returns how many may go now.
    pub fn take(&mut self, want: usize) -> usize {
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }
}

/// Which wave a delivery belongs to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Waves {
    /// The current wave, from 1 (0 before the first delivery).
    pub current: usize,
    /// Deliveries in the current wave.
    pub in_current: usize,
    /// The rate step of the current wave.
    pub step: u32,
}

impl Waves {
    /// The wave of the next delivery, made at rate step `step` and `per_min` devices per
    /// minute: a new one at a new step or once the current holds a minute's worth.
    pub fn assign(&mut self, step: u32, per_min: f64) -> usize {
        let full = self.in_current >= (per_min.ceil() as usize).max(1);
        if self.current == 0 || step != self.step || full {
            self.current += 1;
            self.in_current = 0;
            self.step = step;
        }
        self.in_current += 1;
        self.current
    }
}

/// When to stop delivering.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Abort {
    /// Stop when failed + rolled back + rejected exceed this percentage of the executed.
    pub failure_pct: f64,
    /// ... once at least this many devices executed (answered with a final receipt).
    pub min_executed: usize,
}

impl Abort {
    /// Why to stop now, given `executed` devices of which `failed` did not commit.
    pub fn check(&self, executed: usize, failed: usize) -> Option<String> {
        if executed < self.min_executed.max(1) {
            return None;
        }
        let pct = 100.0 * failed as f64 / executed as f64;
        (pct > self.failure_pct).then(|| {
            format!(
                "{failed} of {executed} executed devices failed, rolled back or rejected \
                 ({pct:.1}% > {}% after at least {})",
                self.failure_pct, self.min_executed
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_grows_by_its_factor_after_every_n_notified_up_to_its_cap() {
        let r = Rate {
            base_per_min: 10.0,
            factor: 2.0,
            every: 5,
            on: IncreaseOn::Notified,
            max_per_min: 50.0,
        };
        assert_eq!(r.step(4, 0), 0);
        assert_eq!(r.step(5, 0), 1);
        assert_eq!(r.step(12, 0), 2);
        assert_eq!(r.per_min(0), 10.0);
        assert_eq!(r.per_min(2), 40.0);
        assert_eq!(r.per_min(3), 50.0);
        assert_eq!(r.per_min(u32::MAX), 50.0);
    }

    #[test]
    fn a_rate_increased_on_success_ignores_devices_only_notified() {
        let r = Rate {
            on: IncreaseOn::Succeeded,
            ..Rate {
                every: 10,
                factor: 1.5,
                ..Rate::constant(10.0)
            }
        };
        assert_eq!(r.step(100, 9), 0);
        assert_eq!(r.step(100, 20), 2);
        assert_eq!(Rate::constant(10.0).step(1000, 1000), 0);
    }

    #[test]
    fn the_pacer_lets_the_first_device_go_at_once_then_holds_the_rate() {
        let mut p = Pacer::default();
        assert_eq!(p.take(10), 1);
        assert_eq!(p.take(10), 0);
        // 120 per minute = 2 per second: ten ticks of 100 ms make two deliveries.
        let mut sent = 0;
        for _ in 0..10 {
            p.refill(120.0, 0.1);
            sent += p.take(10);
        }
        assert_eq!(sent, 2);
    }

    #[test]
    fn an_idle_pacer_saves_at_most_a_second_of_deliveries() {
        let mut p = Pacer::default();
        p.take(1);
        p.refill(600.0, 60.0);
        assert_eq!(p.take(1000), 10);
        let mut slow = Pacer::default();
        slow.take(1);
        slow.refill(6.0, 3600.0);
        assert_eq!(slow.take(1000), 1);
    }

    #[test]
    fn waves_turn_at_each_rate_step_and_after_a_minutes_worth() {
        let mut w = Waves::default();
        let got: Vec<usize> = (0..5).map(|_| w.assign(0, 2.0)).collect();
        assert_eq!(got, [1, 1, 2, 2, 3]);
        assert_eq!(w.assign(1, 100.0), 4);
        assert_eq!(w.assign(1, 100.0), 4);
    }

    #[test]
    fn an_abort_waits_for_the_minimum_then_trips_above_the_share() {
        let a = Abort {
            failure_pct: 5.0,
            min_executed: 50,
        };
        assert_eq!(a.check(49, 10), None);
        assert_eq!(a.check(50, 2), None);
        assert_eq!(a.check(100, 5), None, "exactly 5% is not above 5%");
        let why = a.check(50, 5).unwrap();
        assert!(why.contains("5 of 50") && why.contains("10.0%"), "{why}");
    }
}
