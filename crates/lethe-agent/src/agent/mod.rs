//! The daemon's glue: start-up, the main loop and shutdown. The jobs live in the modules
//! below, one per file:
//!
//! - [`intake`]: a delivered command is stored, verified, its decision journaled, then
//!   acknowledged and (accepted) queued;
//! - [`recovery`]: at start-up, the replay state and every unfinished command rebuilt from
//!   the journal and the store;
//! - [`worker`]: one update at a time, to commit or rollback and a signed receipt;
//! - [`status`]: the retained status, events, receipts and acks, sent by one outbox task;
//!   the self-check task;
//! - [`shared`]: what the tasks share, and `conclude`, where every receipt is signed and
//!   journaled.
//!
//! Tasks: the MQTT poll loop (`mqtt::poll_loop`, never blocks; it drops unauthenticated
//! deliveries and recovers from a poisoned session), the outbox, the worker, the self-check,
//! and this module's loop, which takes what the poll loop hands it (connections,
//! authenticated commands), runs the self-check timer, reports what the channel refused
//! (status at most every 5 s, log at most every minute) and feeds systemd's watchdog.
//!
//! Invariants: a command is acknowledged to the broker only after its `accepted` or
//! `rejected` record is fsynced; a terminal command is never run again (a redelivery gets its
//! stored receipt re-published); one update runs at a time and a full queue answers `busy`;
//! shutdown stops an update between optimizer steps, never inside a commit; recovery runs
//! before systemd hears `READY=1`.

mod intake;
mod recovery;
mod shared;
mod status;
mod worker;

pub use status::Status;

use crate::channel::ChannelStats;
use crate::config::Config;
use crate::fsutil::{now_unix, Reserve};
use crate::journal::{Journal, JournalError};
use crate::log::{info, warn};
use crate::mqtt::{self, Inbound, Topics};
use crate::state::short;
use crate::store::{AdapterStore, StoreError};
use crate::update::UpdateError;
use crate::updater::{load_engines, LoadUpdater};
use lethe_proto::{DeviceContext, ModelContext, SigningKey, TrustStore};
use rumqttc::{AsyncClient, EventLoop};
use shared::Shared;
use status::Out;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

/// What start-up hands to the main loop.
struct Started {
    sh: Arc<Shared>,
    client: AsyncClient,
    eventloop: EventLoop,
    /// The outbox task's end of `Shared::out`.
    out_rx: mpsc::UnboundedReceiver<Out>,
}

/// Opens everything the agent works on (state directory, identity, the updater `load` makes,
/// adapter store, journal, replay state) and makes the shared state and the MQTT client;
/// nothing is published yet.
async fn start(cfg: &Config, load: LoadUpdater) -> Result<Started, AgentError> {
    let started_at = now_unix();
    std::fs::create_dir_all(&cfg.state_dir).map_err(io("creating state_dir"))?;
    let commands_dir = cfg.state_dir.join("commands");
    std::fs::create_dir_all(&commands_dir).map_err(io("creating state_dir/commands"))?;
    let (key, trust) = load_identity(cfg)?;
    let c2 = cfg.clone();
    let engines = tokio::task::spawn_blocking(move || load(&c2))
        .await
        .map_err(|e| AgentError::Other(e.to_string()))??;
    let initial = engines.initial_adapter()?;
    let store =
        AdapterStore::open(&cfg.state_dir.join("adapters"), &initial)?.with_keep(cfg.keep_versions);
    let journal = Journal::open(&cfg.state_dir.join("journal.jsonl"))?;
    let notes = recovery::startup_notes(&journal, &store);
    let replay = recovery::replay_state(&journal, &cfg.state_dir)?;
    let m = engines.model();
    let provider = engines.provider();
    let device = DeviceContext {
        device_id: cfg.device_id.clone(),
        groups: cfg.groups.clone(),
        model: Some(ModelContext {
            id: m.id.clone(),
            version: Some(m.version.clone()),
        }),
    };
    let status = Status {
        state: "online",
        device: cfg.device_id.clone(),
        fleet: cfg.fleet.clone(),
        groups: cfg.groups.clone(),
        model_id: m.id.clone(),
        model_version: m.version.clone(),
        adapter_hash: store.current_hash().to_string(),
        adapter_previous: None,
        forgotten: Vec::new(),
        forgets_undone: Vec::new(),
        execution_provider: provider.used,
        provider_requested: cfg.execution_provider.clone(),
        provider_note: provider.note,
        current_command: None,
        queued: 0,
        commands_seen: 0,
        channel: Default::default(),
        selfcheck: None,
        notes,
        started_at,
        t: started_at,
    };
    let topics = Topics::new(&cfg.fleet, &cfg.device_id, &cfg.groups);
    let opts = mqtt::options(cfg, &topics).map_err(io("MQTT options"))?;
    let (client, eventloop) = AsyncClient::new(opts, 1024);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let sh = Arc::new(Shared {
        cfg: cfg.clone(),
        topics,
        journal: Mutex::new(journal),
        store: Mutex::new(store),
        original: initial.sha256_hex(),
        engines: Mutex::new(engines),
        trust,
        key,
        device,
        replay: Mutex::new(replay),
        out: out_tx,
        status: Mutex::new(status),
        cancel: AtomicBool::new(false),
        commands_dir,
        channel: Arc::new(ChannelStats::default()),
        reserve: Reserve::new(cfg.state_dir.join("reserve"), shared::RESERVE_BYTES),
    });
    info!(
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
    Ok(Started {
        sh,
        client,
        eventloop,
        out_rx,
    })
}

/// Runs the agent on the model package (SIU on ONNX Runtime, tract verification) until
/// `shutdown` turns true.
pub async fn run(cfg: Config, shutdown: watch::Receiver<bool>) -> Result<(), AgentError> {
    run_with(cfg, load_engines(), shutdown).await
}

/// Runs the agent with the updater `load` makes (the seam the fleet simulation plugs into,
/// see [`crate::updater`]) until `shutdown` turns true.
pub async fn run_with(
    cfg: Config,
    load: LoadUpdater,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let Started {
        sh,
        client,
        eventloop,
        out_rx,
    } = start(&cfg, load).await?;

    // Tasks: MQTT poll loop, outbox, worker.
    let (in_tx, mut in_rx) = mpsc::channel(256);
    let (poll_stop_tx, poll_stop_rx) = watch::channel(false);
    let trust = sh.trust.clone();
    let gate = move |bytes: &[u8]| {
        lethe_proto::authenticate_command(bytes, &trust, now_unix()).map_err(|r| r.code())
    };
    let poll = tokio::spawn(mqtt::poll_loop(
        eventloop,
        client.clone(),
        sh.topics.clone(),
        gate,
        sh.channel.clone(),
        in_tx,
        poll_stop_rx,
    ));
    let outbox = tokio::spawn(status::outbox(client.clone(), out_rx));
    let (job_tx, job_rx) = mpsc::channel::<String>(cfg.queue_capacity);
    let worker = tokio::spawn(worker::worker(sh.clone(), job_rx, shutdown.clone()));

    // Crash recovery: finish or restart every unfinished command, re-publish receipts.
    recovery::recover(&sh, &job_tx).await?;
    sh.publish_status();

    let mut selfcheck_task: Option<JoinHandle<()>> = None;
    if cfg.selfcheck_at_start {
        selfcheck_task = Some(status::spawn_selfcheck(sh.clone()));
    }
    let period = if cfg.selfcheck_interval_s == 0 {
        Duration::from_secs(u64::MAX / 4)
    } else {
        Duration::from_secs(cfg.selfcheck_interval_s)
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);

    // systemd (firmware/lethe-agent.service, Type=notify): ready now; the watchdog is fed
    // from this loop, so a hung loop gets the agent restarted.
    let sd = crate::sdnotify::Notifier::from_env();
    let sd_say = |what: &str| {
        if let Err(e) = sd.notify(what) {
            warn!("systemd notify {what:?}: {e}");
        }
    };
    sd_say(&format!(
        "READY=1\nSTATUS=online, adapter {}",
        short(sh.store.lock().unwrap().current_hash())
    ));
    let ping = sd.ping_every().unwrap_or(Duration::from_secs(u64::MAX / 4));
    let mut watchdog = tokio::time::interval(ping);
    // What the channel refused: into the status at most every 5 s, the log at most a minute.
    let mut channel_tick = tokio::time::interval(Duration::from_secs(5));
    let mut channel_reported = sh.channel.report();

    loop {
        tokio::select! {
            _ = shutdown.changed() => { if *shutdown.borrow() { break; } }
            _ = watchdog.tick() => sd_say("WATCHDOG=1"),
            _ = channel_tick.tick() => {
                if let Some(line) = sh.channel.log_due(now_unix()) {
                    warn!("command channel: {line}");
                }
                let now = sh.channel.report();
                if now != channel_reported {
                    channel_reported = now;
                    sh.publish_status();
                }
            }
            _ = tick.tick() => {
                if selfcheck_task.as_ref().is_none_or(|t| t.is_finished()) {
                    selfcheck_task = Some(status::spawn_selfcheck(sh.clone()));
                }
            }
            msg = in_rx.recv() => match msg {
                None => break,
                Some(Inbound::Connected { session_present }) => {
                    info!("connected to {} (session present: {session_present})", cfg.broker);
                    sh.publish_status();
                }
                Some(Inbound::Disconnected(e)) => warn!("broker connection: {e}; reconnecting"),
                Some(Inbound::Command(p)) => intake::on_command(&sh, &job_tx, p).await,
            }
        }
    }

    // Shutdown: stop the update at the next step boundary, wait, say offline, disconnect.
    info!("shutting down");
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
