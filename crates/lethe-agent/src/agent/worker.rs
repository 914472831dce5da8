//! The worker: one update at a time, taken from the bounded queue the intake fills. A forget
//! runs the accepted command through `preparing`, `training` (SIU on ONNX Runtime, each step
//! journaled and announced), `verifying` (tract), then commits the new adapter or rolls back,
//! and concludes with a signed receipt. A revert runs `preparing`, `verifying` (the
//! self-check on the version it goes to) and commits that version the same way, its
//! receipt naming the forgets it undoes. The status says `working` while a job runs.
//!
//! Invariants: a job starts only from `accepted` (a terminal command is never run again);
//! the stored envelope must still hash to its name; a candidate that fails verification is
//! never written to the store; a commit is bracketed by the journal (version file,
//! `committing`, pointer, `committed`), so a crash at any point is recovered to the old or
//! the new version, never a mix; shutdown stops a job between optimizer steps, never inside
//! a commit, and the job restarts on the next start. A write that fails (a full disk) fails
//! the command with a receipt that says so (`no-space: ...`), never leaves it half-way: the
//! current version stays, versions written for it are pruned.

use super::shared::Shared;
use super::AgentError;
use crate::fsutil::{is_storage_full, sha256_hex};
use crate::journal::JournalError;
use crate::log::{debug, error, info, warn};
use crate::revert;
use crate::state::{short, CommandState, Event, Phase};
use crate::store::{ForgetRecord, StoreError, VersionMeta};
use crate::update::{Job, UpdateEvent};
use crate::updater::UpdateFailure;
use lethe_proto::{Action, UndoneForget, Verdict};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Runs the queued jobs until shutdown (or until the queue's senders are gone).
pub(super) async fn worker(
    sh: Arc<Shared>,
    mut rx: mpsc::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let env = tokio::select! {
            _ = shutdown.changed() => { if *shutdown.borrow() { break; } continue; }
            e = rx.recv() => match e { Some(e) => e, None => break },
        };
        if sh.cancel.load(Ordering::SeqCst) {
            break;
        }
        let name = sh.journal.lock().unwrap().get(&env).map(|s| s.name());
        {
            let mut s = sh.status.lock().unwrap();
            s.state = "working";
            s.current_command = name;
            s.queued = rx.len();
        }
        sh.publish_status();
        let sh2 = sh.clone();
        let r = tokio::task::spawn_blocking(move || run_job(&sh2, &env)).await;
        match r {
            Ok(Err(e)) => error!("job error: {e}"),
            Err(e) => error!("job task: {e}"),
            Ok(Ok(())) => {}
        }
        {
            let mut s = sh.status.lock().unwrap();
            s.state = "online";
            s.current_command = None;
            s.queued = rx.len();
        }
        sh.publish_status();
    }
}

/// The reason a failed write gives in a receipt: `no-space: ...` when the disk was full.
fn write_failure(what: &str, e: &dyn std::fmt::Display, full: bool) -> String {
    if full {
        format!("no-space: the device's storage is full ({what}: {e})")
    } else {
        format!("{what}: {e}")
    }
}

fn journal_failure(e: &JournalError) -> String {
    write_failure("journal", e, e.is_storage_full())
}

fn store_failure(what: &str, e: &StoreError) -> String {
    let full = matches!(e, StoreError::Io { source, .. } if is_storage_full(source));
    write_failure(what, e, full)
}

fn load_job_command(sh: &Shared, env: &str) -> Result<lethe_proto::Command, String> {
    let bytes = sh
        .read_envelope(env)
        .map_err(|e| format!("stored command: {e}"))?;
    if sha256_hex(&bytes) != env {
        return Err("stored command does not match its hash".into());
    }
    let e = lethe_proto::envelope::parse(&bytes, lethe_proto::envelope::Kind::Command)
        .map_err(|e| e.to_string())?;
    lethe_proto::parse_command(e.payload).map_err(|e| e.to_string())
}

fn siu_method(m: lethe_proto::Method) -> lethe_siu::Method {
    match m {
        lethe_proto::Method::Siu => lethe_siu::Method::Siu,
        lethe_proto::Method::Ga => lethe_siu::Method::Ga,
        lethe_proto::Method::GaKl => lethe_siu::Method::GaKl,
        lethe_proto::Method::Po => lethe_siu::Method::Po,
    }
}

/// Runs one accepted command to a terminal state (or leaves it for a restart on shutdown).
fn run_job(sh: &Shared, env: &str) -> Result<(), AgentError> {
    let st = match sh.journal.lock().unwrap().get(env) {
        Some(s) if s.phase == Phase::Accepted => s.clone(),
        _ => return Ok(()),
    };
    let name = st.name();
    // The job starts from the adapter current now: a command queued behind another forget
    // must build on its commit, not on the adapter of the moment it was accepted.
    let base_hash = sh.store.lock().unwrap().current_hash().to_string();
    let fail = &|reason: String| -> Result<(), AgentError> {
        warn!("{name} failed: {reason}");
        let done = {
            let mut j = sh.journal.lock().unwrap();
            let cur = j.get(env).cloned().unwrap_or(st.clone());
            sh.conclude(
                &mut j,
                &cur,
                Verdict::Failed,
                Some(reason.clone()),
                (&base_hash, &base_hash),
                BTreeMap::new(),
                |receipt| Event::Failed {
                    reason: reason.clone(),
                    receipt,
                },
            )?
        };
        // Whatever this job wrote to the store and did not commit goes (a full disk).
        if let Err(e) = sh.store.lock().unwrap().prune() {
            warn!("pruning adapter versions after a failure: {e}");
        }
        sh.event(&name, "failed", serde_json::json!({"reason": reason}));
        sh.publish_receipt(&done);
        Ok(())
    };
    let st = if st.base_hash.as_deref() == Some(base_hash.as_str()) {
        st.clone()
    } else {
        let rebased = sh
            .journal
            .lock()
            .unwrap()
            .append(
                env,
                Event::Rebased {
                    base_hash: base_hash.clone(),
                },
            )
            .cloned();
        match rebased {
            Ok(s) => {
                info!("{name} starts from adapter {}", short(&base_hash));
                s
            }
            Err(e) => return fail(journal_failure(&e)),
        }
    };
    // (Bound first: a lock taken in an `if let` is held through its block, and `fail`
    // takes it again.)
    let preparing = sh
        .journal
        .lock()
        .unwrap()
        .append(env, Event::Preparing)
        .map(|_| ());
    if let Err(e) = preparing {
        return fail(journal_failure(&e));
    }
    sh.event(
        &name,
        "preparing",
        serde_json::json!({"attempt": st.attempts}),
    );
    let cmd = match load_job_command(sh, env) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match &cmd.action {
        Action::Forget(f) => forget_job(sh, env, &st, f, fail),
        Action::Revert(r) => revert_job(sh, env, &st, r, fail),
    }
}

/// How a job fails: concludes the command `failed` with this reason.
type Fail<'a> = dyn Fn(String) -> Result<(), AgentError> + 'a;

/// A forget: SIU from the base version, verification, then commit or roll back.
fn forget_job(
    sh: &Shared,
    env: &str,
    st: &CommandState,
    f: &lethe_proto::Forget,
    fail: &Fail,
) -> Result<(), AgentError> {
    let name = st.name();
    let base_hash = st.base_hash.clone().unwrap_or_default();
    let base = match sh.store.lock().unwrap().load(&base_hash) {
        Ok(a) => a,
        Err(e) => return fail(format!("base adapter: {e}")),
    };
    let base_meta = sh.store.lock().unwrap().meta(&base_hash);
    let job = Job {
        concept: f.concept.as_str(),
        image: f.image.bytes(),
        verify_images: f.verify_images.iter().map(|i| i.bytes()).collect(),
        method: f.method.map(siu_method),
        steps: f.steps.map(|s| s as usize),
        forgotten: base_meta.concepts(),
    };
    let mut journal_err = None;
    let result = {
        let mut eng = sh.engines.lock().unwrap();
        eng.update(&sh.cfg, &job, &base, &sh.cancel, &mut |ev| {
            let (event, extra, label) = match ev {
                UpdateEvent::Training { step, of, loss } => (
                    Event::Training { step, of, loss },
                    serde_json::json!({"step": step, "of": of, "loss": loss}),
                    "training",
                ),
                UpdateEvent::Verifying => (Event::Verifying, serde_json::json!({}), "verifying"),
                UpdateEvent::Retrying(retry) => (
                    Event::Retrying,
                    serde_json::json!({"why": retry.why(), "retry": retry}),
                    "retrying",
                ),
            };
            if let Err(e) = sh.journal.lock().unwrap().append(env, event) {
                journal_err.get_or_insert(e);
            }
            debug!("{name}: {label} {extra}");
            sh.event(&name, label, extra);
        })
    };
    if let Some(e) = journal_err {
        return fail(journal_failure(&e));
    }
    let out = match result {
        Err(UpdateFailure::Cancelled) => {
            info!(
                "{name}: stopped by shutdown; it restarts from {} on the next start",
                short(&base_hash)
            );
            return Ok(());
        }
        Err(UpdateFailure::Failed(why)) => return fail(why),
        Ok(o) => o,
    };
    if let Some(why) = &out.failed {
        // The candidate was never committed: the current version stays.
        return roll_back(sh, env, st, why, out.metrics);
    }
    let mut forgets = base_meta.forgets;
    forgets.push(ForgetRecord {
        command: name.clone(),
        concept: lethe_siu::unlearn::normalise(f.concept.as_str()),
    });
    let meta = VersionMeta {
        forgets,
        made_by: Some(name),
        base: Some(base_hash),
    };
    let stored = sh.store.lock().unwrap().put_version(&out.adapter, &meta);
    let new_hash = match stored {
        Ok(h) => h,
        Err(e) => return fail(store_failure("storing the new adapter version", &e)),
    };
    commit(sh, env, st, &new_hash, out.metrics, Vec::new(), fail)
}

/// An operator's revert: decided again against the store, the target's self-check, then
/// commit (the forgets it undoes recorded first) or roll back.
fn revert_job(
    sh: &Shared,
    env: &str,
    st: &CommandState,
    r: &lethe_proto::Revert,
    fail: &Fail,
) -> Result<(), AgentError> {
    let name = st.name();
    // Decided again: a forget queued before this revert may have committed since.
    let planned = {
        let store = sh.store.lock().unwrap();
        revert::plan(&store, &sh.original, r)
    };
    let plan = match planned {
        Ok(p) => p,
        Err(no) => return fail(format!("{}: {}", no.code, no.reason)),
    };
    let mut eng = sh.engines.lock().unwrap();
    let target = if plan.target == sh.original {
        // The package's adapter may have been pruned from the store: put it back.
        let put = eng
            .initial_adapter()
            .map_err(|e| e.to_string())
            .and_then(|a| {
                let h = sh.store.lock().unwrap().put(&a);
                h.map(|_| a)
                    .map_err(|e| store_failure("storing the package's adapter", &e))
            });
        match put {
            Ok(a) => a,
            Err(why) => return fail(why),
        }
    } else {
        match sh.store.lock().unwrap().load(&plan.target) {
            Ok(a) => a,
            Err(e) => return fail(format!("revert target: {e}")),
        }
    };
    if let Err(e) = sh.journal.lock().unwrap().append(env, Event::Verifying) {
        return fail(journal_failure(&e));
    }
    sh.event(
        &name,
        "verifying",
        serde_json::json!({"revert_to": plan.target}),
    );
    let check = eng.selfcheck(&sh.cfg, Ok(target));
    drop(eng);
    let mut metrics = BTreeMap::new();
    metrics.insert("forgets_undone".to_string(), plan.undone.len() as f64);
    metrics.insert("selfcheck_probes".to_string(), check.probes as f64);
    metrics.insert("selfcheck_agree".to_string(), check.probes_agree as f64);
    metrics.insert("selfcheck_correct".to_string(), check.tract_correct as f64);
    metrics.insert("selfcheck_ms".to_string(), check.ms);
    if !check.ok {
        let why = format!(
            "self-check of the revert target failed: {}",
            check.problems.join("; ")
        );
        return roll_back(sh, env, st, &why, metrics);
    }
    if let Err(e) = sh.store.lock().unwrap().record_undone(&plan.undone, &name) {
        return fail(store_failure("recording the undone forgets", &e));
    }
    if !plan.undone.is_empty() {
        warn!(
            "{name} undoes {} forget(s): {}",
            plan.undone.len(),
            revert::describe(&plan.undone)
        );
    }
    let undone = plan
        .undone
        .iter()
        .map(|f| UndoneForget {
            command_id: if f.command.is_empty() {
                "unknown".to_string()
            } else {
                f.command.clone()
            },
            concept: f.concept.clone(),
        })
        .collect();
    commit(sh, env, st, &plan.target, metrics, undone, fail)?;
    // The status's self-check is the current version's: only once the target is current
    // (the worker publishes the status when the job ends).
    let now_current = sh.store.lock().unwrap().current_hash() == plan.target;
    if now_current {
        sh.status.lock().unwrap().selfcheck = Some(check);
    }
    Ok(())
}

/// Concludes a job whose candidate was not committed: `rolled_back`, the current version
/// stays.
fn roll_back(
    sh: &Shared,
    env: &str,
    st: &CommandState,
    why: &str,
    metrics: BTreeMap<String, f64>,
) -> Result<(), AgentError> {
    let name = st.name();
    let base_hash = st.base_hash.clone().unwrap_or_default();
    let cur = sh.journal.lock().unwrap().get(env).cloned().expect("known");
    let done = sh.conclude(
        &mut sh.journal.lock().unwrap(),
        &cur,
        Verdict::RolledBack,
        Some(why.to_string()),
        (&base_hash, &base_hash),
        metrics.clone(),
        |receipt| Event::RolledBack {
            reason: why.to_string(),
            receipt,
        },
    )?;
    warn!("{name} rolled back: {why}");
    sh.event(
        &name,
        "rolled_back",
        serde_json::json!({"reason": why, "metrics": metrics}),
    );
    sh.publish_receipt(&done);
    Ok(())
}

/// Moves `current` to the stored version `new_hash`, bracketed by the journal:
/// `committing` (with the forgets a revert undoes), pointer, `committed`; then prunes old
/// versions and reports.
fn commit(
    sh: &Shared,
    env: &str,
    st: &CommandState,
    new_hash: &str,
    metrics: BTreeMap<String, f64>,
    undone: Vec<UndoneForget>,
    fail: &Fail,
) -> Result<(), AgentError> {
    let name = st.name();
    let base_hash = st.base_hash.clone().unwrap_or_default();
    let committing = sh
        .journal
        .lock()
        .unwrap()
        .append(
            env,
            Event::Committing {
                new_hash: new_hash.to_string(),
                metrics: metrics.clone(),
                undone,
            },
        )
        .cloned();
    let cur = match committing {
        Ok(c) => c,
        Err(e) => return fail(journal_failure(&e)),
    };
    crash_point("before-pointer");
    let moved = sh.store.lock().unwrap().commit(new_hash);
    if let Err(e) = moved {
        return fail(store_failure("moving the current pointer", &e));
    }
    crash_point("after-pointer");
    let done = sh.conclude(
        &mut sh.journal.lock().unwrap(),
        &cur,
        Verdict::Committed,
        None,
        (&base_hash, new_hash),
        metrics.clone(),
        |receipt| Event::Committed {
            new_hash: new_hash.to_string(),
            receipt,
        },
    )?;
    if let Err(e) = sh.store.lock().unwrap().prune() {
        warn!("pruning old adapter versions: {e}");
    }
    info!(
        "{name} committed: adapter {} -> {}",
        short(&base_hash),
        short(new_hash)
    );
    let mut extra = serde_json::json!({"model_hash": new_hash, "metrics": metrics});
    if !done.undone.is_empty() {
        extra["undone_forgets"] = serde_json::to_value(&done.undone).expect("json");
    }
    sh.event(&name, "committed", extra);
    sh.publish_receipt(&done);
    Ok(())
}

/// Fault injection for the crash tests: `LETHE_TEST_CRASH_AT=<point>` aborts the process
/// (like `kill -9`, no destructors, no flush) when the commit reaches `point`.
fn crash_point(point: &str) {
    if std::env::var("LETHE_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        error!("LETHE_TEST_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}
