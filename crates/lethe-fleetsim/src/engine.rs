//! The simulation engine: a TEST DOUBLE of the model update, for fleet-scale tests only.
//! [`SimEngine`] implements the agent's [`Updater`] seam without a model: an "update" is a
//! configured number of steps of a configured duration, announced like real training steps,
//! ending in a configured [`Outcome`]. A committed "update" derives a new adapter from the
//! base and the concept (so model hashes before and after differ, as on a real device).
//!
//! Everything it reports says what it is: the execution provider is `simulated`, its note
//! and every reason name the fleet test double, and the model is `lethe-sim-vlm`.
//! Invariant: like the real updater it never writes the store or the journal.

use lethe_agent::config::Config;
use lethe_agent::selfcheck::SelfCheck;
use lethe_agent::store::StoreError;
use lethe_agent::update::{Job, UpdateError, UpdateEvent};
use lethe_agent::updater::{Candidate, ModelIdentity, ProviderReport, UpdateFailure, Updater};
use lethe_model::Adapter;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The model id simulated devices report (commands for the fleet must name it).
pub const SIM_MODEL_ID: &str = "lethe-sim-vlm";
/// The model version simulated devices report.
pub const SIM_MODEL_VERSION: &str = "sim-1";
/// The execution provider in statuses and receipts of simulated devices.
pub const SIM_PROVIDER: &str = "simulated";
/// Length of a simulated adapter (f32 values).
const ADAPTER_LEN: usize = 16;

/// How a simulated update ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Verification passes: the agent commits a new adapter.
    Commit,
    /// Verification fails: the agent rolls back.
    RollBack,
    /// The update cannot run: the command fails.
    Fail,
}

/// How long a simulated update takes.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub steps: usize,
    pub step: Duration,
}

/// The simulated updater of one device.
pub struct SimEngine {
    pub outcome: Outcome,
    pub timing: Timing,
}

impl SimEngine {
    /// The adapter every simulated device starts from.
    pub fn initial() -> Adapter {
        Adapter((0..ADAPTER_LEN).map(|i| i as f32 / 64.0).collect())
    }

    /// The adapter a committed simulated forget of `concept` makes from `base`.
    pub fn forget(base: &Adapter, concept: &str) -> Adapter {
        let d = Sha256::digest(concept.as_bytes());
        Adapter(
            base.as_slice()
                .iter()
                .zip(d.iter().cycle())
                .map(|(v, b)| v + f32::from(*b) / 4096.0)
                .collect(),
        )
    }
}

impl Updater for SimEngine {
    fn model(&self) -> ModelIdentity {
        ModelIdentity {
            id: SIM_MODEL_ID.into(),
            version: SIM_MODEL_VERSION.into(),
        }
    }

    fn initial_adapter(&self) -> Result<Adapter, UpdateError> {
        Ok(SimEngine::initial())
    }

    fn provider(&self) -> ProviderReport {
        ProviderReport {
            used: SIM_PROVIDER.into(),
            note: Some("fleet test double (lethe-fleetsim): no model, no training".into()),
        }
    }

    fn update(
        &mut self,
        _cfg: &Config,
        job: &Job,
        base: &Adapter,
        cancel: &AtomicBool,
        on: &mut dyn FnMut(UpdateEvent),
    ) -> Result<Candidate, UpdateFailure> {
        let of = self.timing.steps.max(1);
        for step in 1..=of {
            if cancel.load(Ordering::SeqCst) {
                return Err(UpdateFailure::Cancelled);
            }
            std::thread::sleep(self.timing.step);
            on(UpdateEvent::Training {
                step,
                of,
                loss: 1.0 / step as f32,
            });
        }
        on(UpdateEvent::Verifying);
        let metrics = BTreeMap::from([("simulated".to_string(), 1.0), ("steps".into(), of as f64)]);
        match self.outcome {
            Outcome::Commit => Ok(Candidate {
                adapter: SimEngine::forget(base, job.concept),
                metrics,
                failed: None,
            }),
            Outcome::RollBack => Ok(Candidate {
                adapter: base.clone(),
                metrics,
                failed: Some("simulated verification failure (fleet test double)".into()),
            }),
            Outcome::Fail => Err(UpdateFailure::Failed(
                "simulated update failure (fleet test double)".into(),
            )),
        }
    }

    fn selfcheck(&mut self, _cfg: &Config, adapter: Result<Adapter, StoreError>) -> SelfCheck {
        let mut r = SelfCheck {
            at: lethe_agent::fsutil::now_unix(),
            package_hashes_ok: true,
            ..Default::default()
        };
        match adapter {
            Ok(_) => r.adapter_hash_ok = true,
            Err(e) => r.problems.push(format!("current adapter: {e}")),
        }
        r.ok = r.problems.is_empty();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(concept: &str) -> Job<'_> {
        Job {
            concept,
            image: &[],
            verify_images: vec![],
            method: None,
            steps: None,
            forgotten: vec![],
        }
    }

    fn cfg() -> (tempfile::TempDir, Config) {
        let d = tempfile::tempdir().unwrap();
        for f in ["device.key", "trust.json"] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        let text = "device_id = \"sim-1\"\nfleet = \"f\"\ndevice_key = \"device.key\"\n\
                    trust_store = \"trust.json\"\nmodel_dir = \".\"\nstate_dir = \"s\"\n\
                    broker = \"mqtt://127.0.0.1:1\"\n";
        let c = Config::from_toml(text, d.path(), &Default::default()).unwrap();
        (d, c)
    }

    fn run(outcome: Outcome) -> (Result<Candidate, UpdateFailure>, Vec<String>) {
        let (_d, c) = cfg();
        let mut e = SimEngine {
            outcome,
            timing: Timing {
                steps: 3,
                step: Duration::from_millis(1),
            },
        };
        let mut seen = Vec::new();
        let r = e.update(
            &c,
            &job("ada"),
            &SimEngine::initial(),
            &AtomicBool::new(false),
            &mut |ev| seen.push(format!("{ev:?}")),
        );
        (r, seen)
    }

    #[test]
    fn a_committing_simulation_announces_its_steps_and_changes_the_adapter() {
        let (r, seen) = run(Outcome::Commit);
        let c = r.unwrap();
        assert!(c.failed.is_none());
        assert_ne!(c.adapter, SimEngine::initial());
        assert_eq!(c.adapter, SimEngine::forget(&SimEngine::initial(), "ada"));
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen[2].contains("step: 3, of: 3"), "{seen:?}");
        assert_eq!(seen[3], "Verifying");
    }

    #[test]
    fn a_rolling_back_simulation_keeps_the_base_and_says_it_is_simulated() {
        let c = run(Outcome::RollBack).0.unwrap();
        assert_eq!(c.adapter, SimEngine::initial());
        assert!(c.failed.unwrap().contains("fleet test double"));
    }

    #[test]
    fn a_failing_simulation_fails_the_command_with_a_labelled_reason() {
        match run(Outcome::Fail).0 {
            Err(UpdateFailure::Failed(why)) => assert!(why.contains("simulated"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cancelled_simulation_stops_before_its_first_step() {
        let (_d, c) = cfg();
        let mut e = SimEngine {
            outcome: Outcome::Commit,
            timing: Timing {
                steps: 3,
                step: Duration::from_millis(1),
            },
        };
        let r = e.update(
            &c,
            &job("ada"),
            &SimEngine::initial(),
            &AtomicBool::new(true),
            &mut |_| panic!("no step after cancel"),
        );
        assert_eq!(r.unwrap_err(), UpdateFailure::Cancelled);
    }
}
