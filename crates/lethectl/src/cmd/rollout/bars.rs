//! Progress bars of a rollout on stderr: one for the whole fleet (devices settled, the
//! rate, an abort) and one per wave (its devices settled, what they answered), drawn from
//! the rollout's state after every tick. Hidden when stderr is not a terminal (indicatif's
//! rule), or on request.

use super::state::{Outcome, RolloutState};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::Mutex;

pub struct Bars {
    mp: MultiProgress,
    total: ProgressBar,
    waves: Mutex<BTreeMap<usize, ProgressBar>>,
    style: ProgressStyle,
}

/// `12 committed, 1 failed, 3 waiting`: the non-zero outcomes of `devices`.
pub fn summary<'a>(st: &RolloutState, devices: impl Iterator<Item = &'a String>) -> String {
    let mut c: BTreeMap<Outcome, usize> = BTreeMap::new();
    for d in devices {
        *c.entry(st.devices[d].outcome()).or_insert(0) += 1;
    }
    c.iter()
        .map(|(o, n)| format!("{n} {}", o.name().replace('_', " ")))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Bars {
    pub fn new(devices: usize, hidden: bool) -> Bars {
        let mp = if hidden {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        } else {
            MultiProgress::new()
        };
        let style = ProgressStyle::with_template("{prefix:>18} [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> ");
        let total = mp.add(ProgressBar::new(devices as u64));
        total.set_style(style.clone());
        total.set_prefix("all devices");
        Bars {
            mp,
            total,
            waves: Mutex::new(BTreeMap::new()),
            style,
        }
    }

    /// Redraws from the state.
    pub fn update(&self, st: &RolloutState) {
        let settled = |ds: &mut dyn Iterator<Item = &String>| {
            ds.filter(|d| st.devices[*d].settled()).count() as u64
        };
        self.total.set_position(settled(&mut st.order.iter()));
        let mut msg = summary(st, st.order.iter());
        if let Some(why) = &st.aborted {
            msg = format!("ABORTED ({why}); {msg}");
        }
        self.total.set_message(msg);
        let mut waves = self.waves.lock().unwrap();
        for (n, w) in &st.waves {
            let pb = waves.entry(*n).or_insert_with(|| {
                let pb = self.mp.add(ProgressBar::new(0));
                pb.set_style(self.style.clone());
                pb.set_prefix(format!("wave {n} ({:.0}/min)", w.per_min));
                pb
            });
            pb.set_length(w.devices.len() as u64);
            pb.set_position(settled(&mut w.devices.iter()));
            pb.set_message(summary(st, w.devices.iter()));
        }
    }

    /// A line above the bars.
    pub fn note(&self, line: &str) {
        let _ = self.mp.println(line);
    }

    /// Leaves the bars as they are on screen.
    pub fn finish(&self) {
        self.total.abandon();
        for pb in self.waves.lock().unwrap().values() {
            pb.abandon();
        }
    }
}
