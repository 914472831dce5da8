//! Self-checks, at start-up and periodically: the package's file hashes, the current
//! adapter's hash, retained-probe accuracy and ORT-vs-tract parity on the current model.
//! The result goes into the retained status; a failing check is reported, never hidden
//! (the agent keeps running: an operator decides).

use crate::store::StoreError;
use crate::update::Engines;
use lethe_model::{Adapter, Package};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Share of probes on which ORT and tract must give the same answer.
pub const MIN_PARITY: f64 = 0.98;

/// The outcome of one self-check.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SelfCheck {
    pub ok: bool,
    pub at: u64,
    pub package_hashes_ok: bool,
    pub adapter_hash_ok: bool,
    pub probes: usize,
    pub probes_agree: usize,
    pub ort_correct: usize,
    pub tract_correct: usize,
    pub max_logit_diff: f32,
    pub problems: Vec<String>,
    pub ms: f64,
}

/// Runs every check; never fails, reports.
pub fn run(eng: &mut Engines, model_dir: &Path, adapter: Result<Adapter, StoreError>) -> SelfCheck {
    let t0 = Instant::now();
    let mut r = SelfCheck {
        at: crate::fsutil::now_unix(),
        ..Default::default()
    };
    match Package::open(model_dir) {
        Ok(_) => r.package_hashes_ok = true,
        Err(e) => r.problems.push(format!("package: {e}")),
    }
    match adapter {
        Ok(a) => {
            r.adapter_hash_ok = true;
            match lethe_probe::probe_parity(&mut eng.ort, &mut eng.tract, &eng.pkg, a.as_slice()) {
                Ok(p) => {
                    r.probes = p.probes;
                    r.probes_agree = p.agree;
                    r.ort_correct = p.a_correct;
                    r.tract_correct = p.b_correct;
                    r.max_logit_diff = p.max_logit_diff;
                    if (p.agree as f64) < MIN_PARITY * p.probes as f64 || p.max_logit_diff.is_nan()
                    {
                        r.problems.push(format!(
                            "ORT and tract agree on {} of {} probes (max logit diff {})",
                            p.agree, p.probes, p.max_logit_diff
                        ));
                    }
                }
                Err(e) => r.problems.push(format!("probe parity: {e}")),
            }
        }
        Err(e) => r.problems.push(format!("current adapter: {e}")),
    }
    r.ok = r.problems.is_empty();
    r.ms = t0.elapsed().as_secs_f64() * 1e3;
    r
}
