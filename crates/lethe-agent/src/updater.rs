//! The seam between the agent and the model it changes. [`Updater`] is everything the agent
//! asks of the model: which model it is, the adapter a fresh device starts from, one update
//! from a base adapter to a verified candidate, and a self-check. The shipped agent has one
//! implementation, [`Engines`] (SIU on ONNX Runtime, verification with tract, see
//! [`crate::update`]); [`crate::agent::run`] uses it. Fleet-scale tests plug a simulation in
//! through [`crate::agent::run_with`] (the test-only crate `lethe-fleetsim`), so a thousand
//! agents run the real intake, journal, replay, signing and MQTT code without a thousand
//! models.
//!
//! Invariant: an updater never writes the adapter store or the journal. It returns a
//! candidate and the verdict of its verification; the worker commits or rolls back.

use crate::config::Config;
use crate::selfcheck::{self, SelfCheck};
use crate::store::StoreError;
use crate::update::{self, Engines, Job, UpdateError, UpdateEvent};
use lethe_model::Adapter;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

/// The model a device runs, as commands name it (`model.id`, `model.version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    pub id: String,
    pub version: String,
}

/// The execution provider an updater runs on, as status and receipts report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderReport {
    /// The provider actually used.
    pub used: String,
    /// Why the configured provider was not used, if it was not.
    pub note: Option<String>,
}

/// A verified candidate: the new adapter, the numbers for the receipt, and whether it
/// passed verification (`failed: Some(why)` means roll back).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub adapter: Adapter,
    pub metrics: BTreeMap<String, f64>,
    pub failed: Option<String>,
}

/// Why an update produced no candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateFailure {
    /// Stopped by shutdown between optimizer steps: the job restarts on the next start.
    Cancelled,
    /// The update could not run (a bad image, an engine error): the command fails.
    Failed(String),
}

impl From<UpdateError> for UpdateFailure {
    fn from(e: UpdateError) -> Self {
        match e {
            UpdateError::Cancelled => UpdateFailure::Cancelled,
            e => UpdateFailure::Failed(e.to_string()),
        }
    }
}

/// What the agent asks of the model. Runs on blocking threads, one call at a time.
pub trait Updater: Send {
    fn model(&self) -> ModelIdentity;
    /// The adapter a device with an empty store starts from.
    fn initial_adapter(&self) -> Result<Adapter, UpdateError>;
    fn provider(&self) -> ProviderReport;
    /// One update of `base` for `job`, announcing progress through `on`; stops between
    /// steps once `cancel` is set.
    fn update(
        &mut self,
        cfg: &Config,
        job: &Job,
        base: &Adapter,
        cancel: &AtomicBool,
        on: &mut dyn FnMut(UpdateEvent),
    ) -> Result<Candidate, UpdateFailure>;
    /// Checks the model and the current adapter; never fails, reports.
    fn selfcheck(&mut self, cfg: &Config, adapter: Result<Adapter, StoreError>) -> SelfCheck;
}

/// Makes the updater of a device from its configuration (on a blocking thread, at start-up).
pub type LoadUpdater =
    Box<dyn FnOnce(&Config) -> Result<Box<dyn Updater>, UpdateError> + Send + 'static>;

/// The shipped updater: the model package, SIU on ONNX Runtime, verification with tract.
pub fn load_engines() -> LoadUpdater {
    Box::new(|cfg: &Config| {
        let mut engines = Engines::load(cfg)?;
        // Loaded to check the package; an idle device does not hold the split train step's
        // sessions (see update::train).
        engines.train.release();
        // Loading and optimizing the graphs leaves free space in the heap.
        lethe_model::heap::give_back_free_pages();
        Ok(Box::new(engines) as Box<dyn Updater>)
    })
}

impl Updater for Engines {
    fn model(&self) -> ModelIdentity {
        let m = self.pkg.manifest();
        ModelIdentity {
            id: m.model_id.clone(),
            version: m.version.clone(),
        }
    }

    fn initial_adapter(&self) -> Result<Adapter, UpdateError> {
        Ok(self.pkg.adapter()?)
    }

    fn provider(&self) -> ProviderReport {
        ProviderReport {
            used: self.provider.clone(),
            note: self.provider_note.clone(),
        }
    }

    fn update(
        &mut self,
        cfg: &Config,
        job: &Job,
        base: &Adapter,
        cancel: &AtomicBool,
        on: &mut dyn FnMut(UpdateEvent),
    ) -> Result<Candidate, UpdateFailure> {
        let out = update::run(self, cfg, job, base, cancel, on);
        // The update's buffers are free now; the device idles until the next command.
        lethe_model::heap::give_back_free_pages();
        let out = out?;
        Ok(Candidate {
            metrics: out.receipt_metrics(),
            adapter: out.adapter,
            failed: out.failed,
        })
    }

    fn selfcheck(&mut self, cfg: &Config, adapter: Result<Adapter, StoreError>) -> SelfCheck {
        let report = selfcheck::run(self, &cfg.model_dir, adapter);
        lethe_model::heap::give_back_free_pages();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shutdown_stays_a_cancellation_and_every_other_error_fails_the_command() {
        assert_eq!(
            UpdateFailure::from(UpdateError::Cancelled),
            UpdateFailure::Cancelled
        );
        let bad = UpdateError::Image {
            index: 1,
            reason: "not a PNG".into(),
        };
        assert_eq!(
            UpdateFailure::from(bad),
            UpdateFailure::Failed("image 1: not a PNG".into())
        );
    }
}
