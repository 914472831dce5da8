//! The daemon's glue: start-up (journal replay, store check, crash recovery), the intake of
//! commands (verify, journal, then acknowledge), the worker that runs one update at a time,
//! the outbox that publishes events, receipts and the retained status, the self-checks, and
//! shutdown.
//!
//! Invariants: a command is acknowledged to the broker only after its `accepted` or
//! `rejected` record is fsynced; a terminal command is never run again (a redelivery gets its
//! stored receipt re-published); one update runs at a time and a full queue answers `busy`;
//! shutdown stops an update between optimizer steps, never inside a commit.

use crate::config::Config;
use crate::fsutil::{now_ms, now_unix, sha256_hex, write_atomic};
use crate::journal::{Journal, JournalError};
use crate::mqtt::{self, Inbound, Topics};
use crate::selfcheck::{self, SelfCheck};
use crate::state::{recovery, short, CommandState, Event, Phase, Recovery};
use crate::store::{AdapterStore, StoreError};
use crate::update::{self, Engines, Job, UpdateError, UpdateEvent};
use lethe_proto::{
    sign_receipt, verify_command, Action, DeviceContext, ModelContext, Receipt, ReplayState,
    SigningKey, TrustStore, Verdict,
};
use rumqttc::{AsyncClient, Publish, QoS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Errors that stop the agent (a failed command is a receipt, never one of these).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("loading the model: {0}")]
    Update(#[from] UpdateError),
    #[error("{what}: {source}")]
    Proto {
        what: String,
        source: lethe_proto::Rejection,
    },
    #[error("{0}")]
    Other(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

macro_rules! log {
    ($($t:tt)*) => { eprintln!("[lethe-agent {:.3}] {}", now_ms() as f64 / 1e3, format!($($t)*)) };
}

/// Something for the outbox task.
enum Out {
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    },
    Ack(Publish),
    Disconnect,
}

/// The retained status document.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: &'static str,
    pub device: String,
    pub fleet: String,
    pub groups: Vec<String>,
    pub model_id: String,
    pub model_version: String,
    pub adapter_hash: String,
    pub adapter_previous: Option<String>,
    pub execution_provider: String,
    pub provider_requested: String,
    pub provider_note: Option<String>,
    pub current_command: Option<String>,
    pub queued: usize,
    pub commands_seen: usize,
    pub selfcheck: Option<SelfCheck>,
    pub notes: Vec<String>,
    pub started_at: u64,
    pub t: u64,
}

struct Shared {
    cfg: Config,
    topics: Topics,
    journal: Mutex<Journal>,
    store: Mutex<AdapterStore>,
    engines: Mutex<Engines>,
    trust: TrustStore,
    key: SigningKey,
    device: DeviceContext,
    replay: Mutex<ReplayState>,
    out: mpsc::UnboundedSender<Out>,
    status: Mutex<Status>,
    cancel: AtomicBool,
    commands_dir: PathBuf,
}

impl Shared {
    fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        let _ = self.out.send(Out::Publish {
            topic,
            payload,
            retain,
        });
    }

    fn event(&self, name: &str, state: &str, extra: serde_json::Value) {
        let mut v = serde_json::json!({
            "command": name, "device": self.cfg.device_id, "state": state, "t": now_ms()
        });
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        self.publish(
            self.topics.events(name),
            serde_json::to_vec(&v).expect("json"),
            false,
        );
    }

    fn publish_status(&self) {
        // Lock order: never hold `status` while taking `journal` or `store`.
        let (cur, prev) = {
            let store = self.store.lock().unwrap();
            (
                store.current_hash().to_string(),
                store.previous_hash().map(str::to_string),
            )
        };
        let seen = self.journal.lock().unwrap().commands().count();
        let doc = {
            let mut s = self.status.lock().unwrap();
            s.adapter_hash = cur;
            s.adapter_previous = prev;
            s.commands_seen = seen;
            s.t = now_unix();
            serde_json::to_vec(&*s).expect("json")
        };
        self.publish(self.topics.status.clone(), doc, true);
    }

    fn publish_receipt(&self, st: &CommandState) {
        if let Some(r) = st.receipt.as_ref().and_then(|h| hex::decode(h).ok()) {
            self.publish(self.topics.receipt(&st.name()), r, true);
        }
    }

    /// Decides command `st`: signs its receipt (`verdict`, model `before` -> `after`) and
    /// journals the terminal (or `deferred`) event `event(receipt)`, fsynced. Returns the terminal state;
    /// announcing it (event, receipt topic) is the caller's.
    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &self,
        j: &mut Journal,
        st: &CommandState,
        verdict: Verdict,
        reason: Option<String>,
        (before, after): (&str, &str),
        metrics: BTreeMap<String, f64>,
        event: impl FnOnce(String) -> Event,
    ) -> Result<CommandState, AgentError> {
        let receipt = self.receipt(st, verdict, reason, before, after, metrics);
        Ok(j.append(&st.env, event(receipt))?.clone())
    }

    /// Signs a receipt for `st` (hex of the envelope).
    fn receipt(
        &self,
        st: &CommandState,
        verdict: Verdict,
        reason: Option<String>,
        before: &str,
        after: &str,
        metrics: BTreeMap<String, f64>,
    ) -> String {
        let started = st.received_at / 1000;
        let mut reason = reason;
        if let Some(r) = reason.as_mut() {
            if r.len() > 500 {
                let mut cut = 500;
                while !r.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.truncate(cut);
            }
        }
        let provider = self.status.lock().unwrap().execution_provider.clone();
        let r = Receipt {
            v: 1,
            command_id: st.name(),
            device_id: self.cfg.device_id.clone(),
            verdict,
            reason,
            model_hash_before: before.to_string(),
            model_hash_after: after.to_string(),
            metrics,
            execution_provider: Some(provider),
            started_at: started,
            finished_at: now_unix().max(started),
        };
        match sign_receipt(&r, &self.key) {
            Ok(b) => hex::encode(b),
            Err(e) => {
                log!("cannot sign receipt for {}: {e}", st.name());
                String::new()
            }
        }
    }
}

/// A running agent (for the demo and tests): stop it with [`AgentHandle::stop`].
pub struct AgentHandle {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl AgentHandle {
    /// Starts the agent on the current tokio runtime.
    pub fn spawn(cfg: Config) -> AgentHandle {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(cfg, rx));
        AgentHandle { shutdown: tx, task }
    }

    /// Asks the agent to stop and waits for it.
    pub async fn stop(self) -> Result<(), AgentError> {
        let _ = self.shutdown.send(true);
        self.task
            .await
            .map_err(|e| AgentError::Other(format!("agent task: {e}")))?
    }
}

/// Outcome of verifying and journaling one delivery.
enum Intake {
    Duplicate(CommandState),
    Decided(CommandState),
}

/// Reads and checks the device key (its name must be `device_id`) and the trust store.
/// `lethe-agent --check` runs this too, so a unit's pre-start check catches bad files.
pub fn load_identity(cfg: &Config) -> Result<(SigningKey, TrustStore), AgentError> {
    let key_text = std::fs::read_to_string(&cfg.device_key).map_err(io("reading device_key"))?;
    let key = SigningKey::from_file_str(&key_text).map_err(|source| AgentError::Proto {
        what: "device_key".into(),
        source,
    })?;
    if key.name() != cfg.device_id {
        return Err(AgentError::Other(format!(
            "device_key is named {:?}, the device is {:?}: receipts would not verify",
            key.name(),
            cfg.device_id
        )));
    }
    let trust_bytes = std::fs::read(&cfg.trust_store).map_err(io("reading trust_store"))?;
    let trust = TrustStore::from_json(&trust_bytes).map_err(|source| AgentError::Proto {
        what: "trust_store".into(),
        source,
    })?;
    Ok((key, trust))
}

/// Runs the agent until `shutdown` turns true.
pub async fn run(cfg: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    let started_at = now_unix();
    std::fs::create_dir_all(&cfg.state_dir).map_err(io("creating state_dir"))?;
    let commands_dir = cfg.state_dir.join("commands");
    std::fs::create_dir_all(&commands_dir).map_err(io("creating state_dir/commands"))?;
    let (key, trust) = load_identity(&cfg)?;
    let c2 = cfg.clone();
    let engines = tokio::task::spawn_blocking(move || Engines::load(&c2))
        .await
        .map_err(|e| AgentError::Other(e.to_string()))??;
    let initial = engines.pkg.adapter().map_err(UpdateError::from)?;
    let store = AdapterStore::open(&cfg.state_dir.join("adapters"), &initial)?;
    let journal = Journal::open(&cfg.state_dir.join("journal.jsonl"))?;
    let mut notes = Vec::new();
    if journal.repaired_tail {
        notes.push("journal: a torn last record was dropped at start-up".to_string());
    }
    if let Some(bad) = &store.recovered_from {
        notes.push(format!(
            "adapter store: version {} was corrupt; fell back to {}",
            short(bad),
            short(store.current_hash())
        ));
    }
    for n in &notes {
        log!("{n}");
    }
    // Replay state: what the journal accepted, merged with an optional seeded file.
    let mut per_issuer = journal.accepted_sequences();
    if let Ok(b) = std::fs::read(cfg.state_dir.join("replay.json")) {
        if let Ok(r) = serde_json::from_slice::<serde_json::Value>(&b) {
            if let Some(m) = r.get("per_issuer").and_then(|m| m.as_object()) {
                for (k, v) in m {
                    if let Some(q) = v.as_u64() {
                        let e = per_issuer.entry(k.clone()).or_insert(q);
                        *e = (*e).max(q);
                    }
                }
            }
        }
    }
    let replay: ReplayState =
        serde_json::from_value(serde_json::json!({ "per_issuer": per_issuer }))
            .map_err(|e| AgentError::Other(format!("replay state: {e}")))?;
    let m = engines.pkg.manifest();
    let device = DeviceContext {
        device_id: cfg.device_id.clone(),
        groups: cfg.groups.clone(),
        model: Some(ModelContext {
            id: m.model_id.clone(),
            version: Some(m.version.clone()),
        }),
    };
    let status = Status {
        state: "online",
        device: cfg.device_id.clone(),
        fleet: cfg.fleet.clone(),
        groups: cfg.groups.clone(),
        model_id: m.model_id.clone(),
        model_version: m.version.clone(),
        adapter_hash: store.current_hash().to_string(),
        adapter_previous: None,
        execution_provider: engines.provider.clone(),
        provider_requested: cfg.execution_provider.clone(),
        provider_note: engines.provider_note.clone(),
        current_command: None,
        queued: 0,
        commands_seen: 0,
        selfcheck: None,
        notes,
        started_at,
        t: started_at,
    };
    let topics = Topics::new(&cfg.fleet, &cfg.device_id, &cfg.groups);
    let opts = mqtt::options(&cfg, &topics).map_err(io("MQTT options"))?;
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let sh = Arc::new(Shared {
        cfg: cfg.clone(),
        topics: topics.clone(),
        journal: Mutex::new(journal),
        store: Mutex::new(store),
        engines: Mutex::new(engines),
        trust,
        key,
        device,
        replay: Mutex::new(replay),
        out: out_tx,
        status: Mutex::new(status),
        cancel: AtomicBool::new(false),
        commands_dir,
    });
    log!(
        "device {} fleet {} model {} adapter {} provider {}",
        cfg.device_id,
        cfg.fleet,
        sh.device
            .model
            .as_ref()
            .map(|m| m.id.as_str())
            .unwrap_or(""),
        short(sh.store.lock().unwrap().current_hash()),
        sh.status.lock().unwrap().execution_provider
    );

    // Tasks: MQTT poll loop, outbox, worker.
    let (in_tx, mut in_rx) = mpsc::channel(256);
    let (poll_stop_tx, poll_stop_rx) = watch::channel(false);
    let poll = tokio::spawn(mqtt::poll_loop(
        eventloop,
        client.clone(),
        topics.clone(),
        in_tx,
        poll_stop_rx,
    ));
    let outbox = tokio::spawn(outbox(client.clone(), out_rx));
    let (job_tx, job_rx) = mpsc::channel::<String>(cfg.queue_capacity);
    let worker = tokio::spawn(worker(sh.clone(), job_rx, shutdown.clone()));

    // Crash recovery: finish or restart every unfinished command, re-publish receipts.
    recover(&sh, &job_tx).await?;
    sh.publish_status();

    let mut selfcheck_task: Option<JoinHandle<()>> = None;
    if cfg.selfcheck_at_start {
        selfcheck_task = Some(spawn_selfcheck(sh.clone()));
    }
    let period = if cfg.selfcheck_interval_s == 0 {
        std::time::Duration::from_secs(u64::MAX / 4)
    } else {
        std::time::Duration::from_secs(cfg.selfcheck_interval_s)
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);

    // systemd (firmware/lethe-agent.service, Type=notify): ready now; the watchdog is fed
    // from this loop, so a hung loop gets the agent restarted.
    let sd = crate::sdnotify::Notifier::from_env();
    let sd_say = |what: &str| {
        if let Err(e) = sd.notify(what) {
            log!("systemd notify {what:?}: {e}");
        }
    };
    sd_say(&format!(
        "READY=1\nSTATUS=online, adapter {}",
        short(sh.store.lock().unwrap().current_hash())
    ));
    let ping = sd
        .ping_every()
        .unwrap_or(std::time::Duration::from_secs(u64::MAX / 4));
    let mut watchdog = tokio::time::interval(ping);

    loop {
        tokio::select! {
            _ = shutdown.changed() => { if *shutdown.borrow() { break; } }
            _ = watchdog.tick() => sd_say("WATCHDOG=1"),
            _ = tick.tick() => {
                if selfcheck_task.as_ref().is_none_or(|t| t.is_finished()) {
                    selfcheck_task = Some(spawn_selfcheck(sh.clone()));
                }
            }
            msg = in_rx.recv() => match msg {
                None => break,
                Some(Inbound::Connected { session_present }) => {
                    log!("connected to {} (session present: {session_present})", cfg.broker);
                    sh.publish_status();
                }
                Some(Inbound::Disconnected(e)) => log!("broker connection: {e}; reconnecting"),
                Some(Inbound::Command(p)) => {
                    let permit = job_tx.clone().try_reserve_owned().ok();
                    let sh2 = sh.clone();
                    let slot = permit.is_some();
                    let payload = p.payload.to_vec();
                    let res = tokio::task::spawn_blocking(move || intake(&sh2, &payload, slot)).await;
                    match res {
                        Ok(Ok(Intake::Duplicate(st))) => {
                            log!("duplicate delivery of {} ({}): not applied again", st.name(), st.phase.name());
                            let _ = sh.out.send(Out::Ack(p));
                            sh.event(&st.name(), "duplicate", serde_json::json!({"phase": st.phase.name()}));
                            sh.publish_receipt(&st);
                        }
                        Ok(Ok(Intake::Decided(st))) => {
                            let _ = sh.out.send(Out::Ack(p));
                            if st.phase == Phase::Accepted {
                                log!("accepted {} (concept {:?})", st.name(), st.concept.as_deref().unwrap_or(""));
                                sh.event(&st.name(), "accepted", serde_json::json!({"concept": st.concept}));
                                if let Some(permit) = permit { permit.send(st.env.clone()); }
                            } else {
                                let what = st.phase.name();
                                log!("{what} {}: {}", st.name(), st.reason.as_deref().unwrap_or(""));
                                sh.event(&st.name(), what, serde_json::json!({"reason": st.reason}));
                                sh.publish_receipt(&st);
                            }
                            sh.publish_status();
                        }
                        // Not journaled: not acknowledged, the broker will redeliver it.
                        Ok(Err(e)) => log!("intake failed (not acknowledged): {e}"),
                        Err(e) => log!("intake task: {e}"),
                    }
                }
            }
        }
    }

    // Shutdown: stop the update at the next step boundary, wait, say offline, disconnect.
    log!("shutting down");
    sd_say("STOPPING=1");
    sh.cancel.store(true, Ordering::SeqCst);
    drop(job_tx);
    let _ = worker.await;
    if let Some(t) = selfcheck_task {
        let _ = t.await;
    }
    {
        let mut s = sh.status.lock().unwrap();
        s.state = "offline";
        s.current_command = None;
    }
    sh.publish_status();
    let _ = sh.out.send(Out::Disconnect);
    drop(sh);
    let _ = outbox.await;
    let _ = poll_stop_tx.send(true);
    let _ = poll.await;
    Ok(())
}

async fn outbox(client: AsyncClient, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(o) = rx.recv().await {
        let r = match o {
            Out::Publish {
                topic,
                payload,
                retain,
            } => {
                client
                    .publish(topic, QoS::AtLeastOnce, retain, payload)
                    .await
            }
            Out::Ack(p) => client.ack(&p).await,
            Out::Disconnect => {
                let _ = client.disconnect().await;
                break;
            }
        };
        if let Err(e) = r {
            log!("outbox: {e}");
        }
    }
}

fn spawn_selfcheck(sh: Arc<Shared>) -> JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let r = {
            let mut eng = sh.engines.lock().unwrap();
            let adapter = sh.store.lock().unwrap().current();
            selfcheck::run(&mut eng, &sh.cfg.model_dir, adapter)
        };
        if r.ok {
            log!(
                "self-check ok ({} of {} probes agree, {:.0} ms)",
                r.probes_agree,
                r.probes,
                r.ms
            );
        } else {
            log!("SELF-CHECK FAILED: {}", r.problems.join("; "));
        }
        sh.status.lock().unwrap().selfcheck = Some(r);
        sh.publish_status();
    })
}

/// Verifies a delivery and journals the decision (blocking: fsyncs).
fn intake(sh: &Shared, bytes: &[u8], slot: bool) -> Result<Intake, AgentError> {
    let env = sha256_hex(bytes);
    let mut j = sh.journal.lock().unwrap();
    match j.get(&env) {
        // Deferred (busy) before: nothing was applied, decide again.
        Some(st) if st.phase == Phase::Deferred => {}
        Some(st) => return Ok(Intake::Duplicate(st.clone())),
        None => {
            let path = sh.commands_dir.join(format!("{env}.env"));
            write_atomic(&path, bytes).map_err(io(format!("storing {}", path.display())))?;
            j.append(&env, Event::Received)?;
        }
    }
    let st = decide(sh, &mut j, &env, bytes, slot)?;
    Ok(Intake::Decided(st))
}

/// Verifies the stored envelope of a `received` command and journals accepted or rejected.
fn decide(
    sh: &Shared,
    j: &mut Journal,
    env: &str,
    bytes: &[u8],
    slot: bool,
) -> Result<CommandState, AgentError> {
    let now = now_unix();
    let current = sh.store.lock().unwrap().current_hash().to_string();
    // Everything but replay first, so that a resend of a known id is recognised as such.
    let verdict = match verify_command(bytes, &sh.trust, &sh.device, &ReplayState::new(), now) {
        Err(r) => Err((r.code().to_string(), r.to_string(), None)),
        Ok((cmd, _)) => {
            if let Some(known) = j.by_id(cmd.id.as_str()).filter(|k| k.env != env) {
                Err((
                    "duplicate-id".to_string(),
                    format!(
                        "command {} is already known ({}); not applied again",
                        cmd.id.as_str(),
                        known.phase.name()
                    ),
                    None,
                ))
            } else {
                let replay = sh.replay.lock().unwrap().clone();
                match replay.check(cmd.issuer.as_str(), cmd.seq) {
                    Err(r) => Err((r.code().to_string(), r.to_string(), None)),
                    Ok(_) if !slot => Err((
                        "busy".to_string(),
                        format!(
                            "an update is running and {} more are queued; send the same \
                             command again later",
                            sh.cfg.queue_capacity
                        ),
                        Some(cmd.id.as_str().to_string()),
                    )),
                    Ok(next) => Ok((cmd, next)),
                }
            }
        }
    };
    match verdict {
        Ok((cmd, next)) => {
            let Action::Forget(f) = &cmd.action;
            let st = j.append(
                env,
                Event::Accepted {
                    id: cmd.id.as_str().to_string(),
                    issuer: cmd.issuer.as_str().to_string(),
                    seq: cmd.seq,
                    base_hash: current,
                    concept: f.concept.as_str().to_string(),
                },
            )?;
            // Persisted by the journal record above; only now does memory follow.
            *sh.replay.lock().unwrap() = next;
            Ok(st.clone())
        }
        Err((code, reason, busy_id)) => {
            let mut st = j.get(env).expect("received").clone();
            if busy_id.is_some() {
                st.id = busy_id.clone();
            }
            let said = format!("{code}: {reason}");
            sh.conclude(
                j,
                &st,
                Verdict::Rejected,
                Some(said),
                (&current, &current),
                BTreeMap::new(),
                |receipt| match busy_id {
                    Some(id) => Event::Deferred {
                        id,
                        reason,
                        receipt,
                    },
                    None => Event::Rejected {
                        code,
                        reason,
                        receipt,
                    },
                },
            )
        }
    }
}

/// Restarts, finishes or fails every unfinished command (start-up).
async fn recover(sh: &Arc<Shared>, job_tx: &mpsc::Sender<String>) -> Result<(), AgentError> {
    let sh2 = sh.clone();
    let restarts = tokio::task::spawn_blocking(move || -> Result<Vec<String>, AgentError> {
        let sh = sh2;
        let mut j = sh.journal.lock().unwrap();
        let all: Vec<CommandState> = j.commands().cloned().collect();
        let mut restarts = Vec::new();
        let n = all.len();
        for (i, st) in all.into_iter().enumerate() {
            let plan = {
                let store = sh.store.lock().unwrap();
                recovery(&st, store.current_hash(), |h| store.has(h))
            };
            match plan {
                Recovery::Wait => {}
                Recovery::Done => {
                    // Receipts are retained: re-publish the recent ones in case the crash
                    // came before the broker had them.
                    if i + 32 >= n {
                        sh.publish_receipt(&st);
                    }
                }
                Recovery::Reverify => {
                    let path = sh.commands_dir.join(format!("{}.env", st.env));
                    let bytes =
                        std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
                    let slot = restarts.len() < sh.cfg.queue_capacity;
                    let st = decide(&sh, &mut j, &st.env, &bytes, slot)?;
                    log!("recovered {}: re-verified, {}", st.name(), st.phase.name());
                    if st.phase == Phase::Accepted {
                        restarts.push(st.env.clone());
                    } else {
                        sh.publish_receipt(&st);
                    }
                }
                Recovery::Restart { base } => {
                    if st.attempts >= 5 {
                        let why = format!(
                            "gave up after {} attempts (the agent kept dying during this update)",
                            st.attempts
                        );
                        let st = sh.conclude(
                            &mut j,
                            &st,
                            Verdict::Failed,
                            Some(why),
                            (&base, &base),
                            BTreeMap::new(),
                            |receipt| Event::Failed {
                                reason: "too many attempts".into(),
                                receipt,
                            },
                        )?;
                        sh.publish_receipt(&st);
                        continue;
                    }
                    log!(
                        "recovered {}: was {}, restarting from {} (attempt {})",
                        st.name(),
                        st.phase.name(),
                        short(&base),
                        st.attempts + 1
                    );
                    j.append(
                        &st.env,
                        Event::Restarted {
                            attempt: st.attempts + 1,
                        },
                    )?;
                    sh.event(
                        &st.name(),
                        "restarted",
                        serde_json::json!({"attempt": st.attempts + 1}),
                    );
                    restarts.push(st.env.clone());
                }
                Recovery::CompleteCommit { new_hash } | Recovery::FinishCommitted { new_hash } => {
                    sh.store.lock().unwrap().commit(&new_hash)?;
                    let base = st.base_hash.clone().unwrap_or_default();
                    let st = sh.conclude(
                        &mut j,
                        &st,
                        Verdict::Committed,
                        None,
                        (&base, &new_hash),
                        st.metrics.clone(),
                        |receipt| Event::Committed {
                            new_hash: new_hash.clone(),
                            receipt,
                        },
                    )?;
                    log!(
                        "recovered {}: commit of {} finished",
                        st.name(),
                        short(&new_hash)
                    );
                    sh.event(
                        &st.name(),
                        "committed",
                        serde_json::json!({"model_hash": new_hash, "recovered": true}),
                    );
                    sh.publish_receipt(&st);
                }
                Recovery::Fail { reason } => {
                    let cur = sh.store.lock().unwrap().current_hash().to_string();
                    let st = sh.conclude(
                        &mut j,
                        &st,
                        Verdict::Failed,
                        Some(reason.clone()),
                        (&cur, &cur),
                        BTreeMap::new(),
                        |receipt| Event::Failed { reason, receipt },
                    )?;
                    sh.publish_receipt(&st);
                }
            }
        }
        Ok(restarts)
    })
    .await
    .map_err(|e| AgentError::Other(e.to_string()))??;
    for env in restarts {
        let _ = job_tx.send(env).await;
    }
    Ok(())
}

async fn worker(
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
            Ok(Err(e)) => log!("job error: {e}"),
            Err(e) => log!("job task: {e}"),
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

fn load_job_command(sh: &Shared, env: &str) -> Result<lethe_proto::Command, String> {
    let path = sh.commands_dir.join(format!("{env}.env"));
    let bytes =
        std::fs::read(&path).map_err(|e| format!("stored command {}: {e}", path.display()))?;
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
    let base_hash = st.base_hash.clone().unwrap_or_default();
    let fail = |reason: String| -> Result<(), AgentError> {
        log!("{name} failed: {reason}");
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
        sh.event(&name, "failed", serde_json::json!({"reason": reason}));
        sh.publish_receipt(&done);
        Ok(())
    };
    sh.journal.lock().unwrap().append(env, Event::Preparing)?;
    sh.event(
        &name,
        "preparing",
        serde_json::json!({"attempt": st.attempts}),
    );
    let cmd = match load_job_command(sh, env) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let base = match sh.store.lock().unwrap().load(&base_hash) {
        Ok(a) => a,
        Err(e) => return fail(format!("base adapter: {e}")),
    };
    let Action::Forget(f) = &cmd.action;
    let forgotten = sh.store.lock().unwrap().forgotten(&base_hash);
    let job = Job {
        concept: f.concept.as_str(),
        image: f.image.bytes(),
        verify_images: f.verify_images.iter().map(|i| i.bytes()).collect(),
        method: f.method.map(siu_method),
        steps: f.steps.map(|s| s as usize),
        forgotten: forgotten.clone(),
    };
    let mut journal_err = None;
    let result = {
        let mut eng = sh.engines.lock().unwrap();
        update::run(&mut eng, &sh.cfg, &job, &base, &sh.cancel, &mut |ev| {
            let (event, extra, label) = match ev {
                UpdateEvent::Training { step, of, loss } => (
                    Event::Training { step, of, loss },
                    serde_json::json!({"step": step, "of": of, "loss": loss}),
                    "training",
                ),
                UpdateEvent::Verifying => (Event::Verifying, serde_json::json!({}), "verifying"),
            };
            if let Err(e) = sh.journal.lock().unwrap().append(env, event) {
                journal_err.get_or_insert(e);
            }
            sh.event(&name, label, extra);
        })
    };
    if let Some(e) = journal_err {
        return Err(e.into());
    }
    let out = match result {
        Err(UpdateError::Cancelled) => {
            log!(
                "{name}: stopped by shutdown; it restarts from {} on the next start",
                short(&base_hash)
            );
            return Ok(());
        }
        Err(e) => return fail(e.to_string()),
        Ok(o) => o,
    };
    let metrics = out.receipt_metrics();
    let cur = sh.journal.lock().unwrap().get(env).cloned().expect("known");
    if let Some(why) = &out.failed {
        // The candidate was never committed: the current version stays.
        let done = sh.conclude(
            &mut sh.journal.lock().unwrap(),
            &cur,
            Verdict::RolledBack,
            Some(why.clone()),
            (&base_hash, &base_hash),
            metrics.clone(),
            |receipt| Event::RolledBack {
                reason: why.clone(),
                receipt,
            },
        )?;
        log!("{name} rolled back: {why}");
        sh.event(
            &name,
            "rolled_back",
            serde_json::json!({"reason": why, "metrics": metrics}),
        );
        sh.publish_receipt(&done);
        return Ok(());
    }
    // Commit, bracketed by the journal: version file, `committing`, pointer, `committed`.
    let now_forgotten: Vec<String> = forgotten
        .into_iter()
        .chain([lethe_siu::unlearn::normalise(f.concept.as_str())])
        .collect();
    let new_hash = sh
        .store
        .lock()
        .unwrap()
        .put_forgetting(&out.adapter, &now_forgotten)?;
    sh.journal.lock().unwrap().append(
        env,
        Event::Committing {
            new_hash: new_hash.clone(),
            metrics: metrics.clone(),
        },
    )?;
    crash_point("before-pointer");
    sh.store.lock().unwrap().commit(&new_hash)?;
    crash_point("after-pointer");
    let done = sh.conclude(
        &mut sh.journal.lock().unwrap(),
        &cur,
        Verdict::Committed,
        None,
        (&base_hash, &new_hash),
        metrics.clone(),
        |receipt| Event::Committed {
            new_hash: new_hash.clone(),
            receipt,
        },
    )?;
    if let Err(e) = sh.store.lock().unwrap().prune() {
        log!("pruning old adapter versions: {e}");
    }
    log!(
        "{name} committed: adapter {} -> {}",
        short(&base_hash),
        short(&new_hash)
    );
    sh.event(
        &name,
        "committed",
        serde_json::json!({"model_hash": new_hash, "metrics": metrics}),
    );
    sh.publish_receipt(&done);
    Ok(())
}

/// Fault injection for the crash tests: `LETHE_TEST_CRASH_AT=<point>` aborts the process
/// (like `kill -9`, no destructors, no flush) when the commit reaches `point`.
fn crash_point(point: &str) {
    if std::env::var("LETHE_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        log!("LETHE_TEST_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}
