//! `lethe-agent`: the daemon binary. Parses the configuration (file + flags, every problem
//! at once), runs the agent until SIGINT/SIGTERM, maps failures to exit codes:
//! 0 clean stop, 2 bad configuration or a start-up failure (one line on stderr).

use clap::Parser;
use lethe_agent::{Config, Overrides};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "lethe-agent",
    version,
    about = "Lethe on-device agent: forget on signed command"
)]
struct Cli {
    /// Configuration file (TOML); see crates/lethe-agent/README.md.
    #[arg(long, short)]
    config: PathBuf,
    #[arg(long)]
    device_id: Option<String>,
    #[arg(long)]
    fleet: Option<String>,
    /// Replaces the file's groups (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    #[arg(long)]
    device_key: Option<PathBuf>,
    #[arg(long)]
    trust_store: Option<PathBuf>,
    #[arg(long)]
    model_dir: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// mqtt://host:port or mqtts://host:port
    #[arg(long)]
    broker: Option<String>,
    /// cpu, cuda or tensorrt (falls back along tensorrt -> cuda -> cpu).
    #[arg(long)]
    execution_provider: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    lethe_model::heap::one_arena();
    lethe_model::heap::keep_step_buffers();
    let cli = Cli::parse();
    let ov = Overrides {
        device_id: cli.device_id,
        fleet: cli.fleet,
        groups: (!cli.groups.is_empty()).then_some(cli.groups),
        device_key: cli.device_key,
        trust_store: cli.trust_store,
        model_dir: cli.model_dir,
        state_dir: cli.state_dir,
        broker: cli.broker,
        execution_provider: cli.execution_provider,
    };
    let cfg = match Config::load(&cli.config, &ov) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        // The files the configuration names must also parse: key (named device_id), trust
        // store, model package (hashes).
        let checked = lethe_agent::agent::load_identity(&cfg)
            .map(|_| ())
            .map_err(|e| e.to_string())
            .and_then(|()| {
                lethe_model::Package::open(&cfg.model_dir)
                    .map(|_| ())
                    .map_err(|e| format!("model_dir: {e}"))
            });
        if let Err(e) = checked {
            eprintln!("error: configuration {}: {e}", cli.config.display());
            return ExitCode::from(2);
        }
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        lethe_agent::agent::run(cfg, rx).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
