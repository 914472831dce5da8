//! The agent's configuration: a TOML file with command-line overrides, parsed and checked
//! once at start-up. Every problem is reported at once (one line each), not the first only.
//! Relative paths in the file are relative to the file's folder.

use lethe_model::{GpuOptions, Provider};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Everything the agent needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub device_id: String,
    pub fleet: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The device's Ed25519 private key (`lethectl keygen`); its name must be `device_id`.
    pub device_key: PathBuf,
    /// Operator keys the device trusts (`lethectl trust`).
    pub trust_store: PathBuf,
    /// The model package folder.
    pub model_dir: PathBuf,
    /// Journal, adapter store, stored envelopes.
    pub state_dir: PathBuf,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub broker: String,
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Preferred ONNX Runtime execution provider for the train step and ORT inference:
    /// `tensorrt`, `cuda` or `cpu`; sessions fall back tensorrt -> cuda -> cpu.
    #[serde(default = "default_provider")]
    pub execution_provider: String,
    /// Options of the GPU providers.
    #[serde(default)]
    pub gpu: GpuConfig,
    /// Commands waiting behind the running one; a full queue answers `busy`.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Cap on an incoming MQTT packet (a command carries images).
    #[serde(default = "default_packet")]
    pub max_packet_bytes: usize,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Settled commands (terminal or deferred) the journal keeps when it is compacted, so
    /// that a redelivery of one of them is answered with its stored receipt; older ones are
    /// refused by the replay floor instead (never applied again).
    #[serde(default = "default_journal_keep")]
    pub journal_keep: usize,
    /// Adapter versions kept besides the current one, for an operator's revert (the
    /// package's original adapter is always reachable). 1..=64; default 8.
    #[serde(default = "default_keep_versions")]
    pub keep_versions: usize,
    /// Periodic self-check; 0 = only at start-up.
    #[serde(default = "default_selfcheck")]
    pub selfcheck_interval_s: u64,
    #[serde(default = "yes")]
    pub selfcheck_at_start: bool,
    #[serde(default)]
    pub update: UpdateConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
}

/// How the update runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Step budget (a command's `steps` can only lower it).
    pub max_steps: usize,
    pub min_steps: usize,
    pub seed: u64,
    pub views: usize,
    pub lr: f32,
    /// Forget even when the model does not recognise the concept in the image.
    pub allow_mismatch: bool,
    /// Slow every optimizer step by this much (tests use it to widen crash windows).
    pub step_delay_ms: u64,
    /// When a candidate fails verification only by bringing back an earlier forget, run
    /// the forget once more holding every earlier forget in the stopping rule, and verify
    /// that candidate instead (update.rs; ARCHITECTURE.md has the measurements).
    pub retry_earlier: bool,
    /// When a candidate fails verification only on answers about the concept that name
    /// another known person or are ill-formed (or on its own stopping rule,
    /// `verify.require_stopping_rule`), and the original model finds a look-alike likely on
    /// the concept's views, run the forget once more with this many extra views
    /// between the concept and its look-alikes (0, the default: no such retry; it turns
    /// rollbacks of a look-alike's forget into commits, but in 20 forgets in a row the
    /// look-alike himself then drifts: update.rs and ARCHITECTURE.md have the measurements).
    pub retry_lookalike_views: usize,
    /// When a candidate still fails verification and neither retry above applies (or it
    /// was tried and failed), run the forget again from the same base with another seed
    /// (`seed + 1`, `seed + 2`, ...: other views of the image, other batches, another
    /// made-up name), up to this many times, and verify each the same way. Every candidate
    /// passes the same gate; the gate's verdicts on the held-out photos and wordings no
    /// candidate is trained or stopped on say whether that lets failures through
    /// (ARCHITECTURE.md has the measurements). 0: off. At most 4.
    pub retry_reseeds: usize,
    /// On the CPU, split each optimizer step over the two cores (train_grad.onnx, one
    /// one-thread session per half) instead of one train_grad.onnx session on ONNX Runtime's
    /// pool running the halves in turn: a step 1.2-1.6x faster, ~50 ms less a forget, but
    /// the agent's peak during a forget ~12 MiB higher (each session of the 1,157-node graph
    /// holds ~12 MiB). Off by default: the memory budget matters more (ARCHITECTURE.md).
    pub split_train_step: bool,
    /// Guard the earlier forgets in every optimizer step (SIU with earlier forgets): the
    /// step also takes the gradient of half a batch of their replayed rows, and where it
    /// would raise their loss it loses its component along that gradient (A-GEM). Needs the
    /// package's train_grad.onnx; without it, forgets run unguarded. 20 forgets in a row,
    /// dev seeds: more commit (ARCHITECTURE.md).
    pub guard_earlier: bool,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            max_steps: 40,
            min_steps: 4,
            seed: 0,
            views: 8,
            lr: 1e-3,
            allow_mismatch: false,
            step_delay_ms: 0,
            retry_earlier: true,
            retry_lookalike_views: 0,
            retry_reseeds: 2,
            split_train_step: false,
            guard_earlier: true,
        }
    }
}

/// GPU execution provider options (`[gpu]`), used when `execution_provider` is `cuda` or
/// `tensorrt` and the ONNX Runtime library offers it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// CUDA device ordinal.
    pub device_id: u32,
    /// TensorRT fp16 engines (off: the train step is checked in fp32).
    pub fp16: bool,
    /// TensorRT engine and timing cache folder; relative paths follow the config file.
    /// Default: `<state_dir>/trt-cache`.
    pub trt_engine_cache_dir: Option<PathBuf>,
    /// TensorRT builder workspace limit in MiB (0 or absent: TensorRT's default).
    pub trt_workspace_mb: u64,
    /// CUDA memory arena limit in MiB (0 or absent: no limit).
    pub cuda_memory_limit_mb: u64,
}

/// Verification thresholds (tract, on the candidate, before any commit). Held-out images of
/// the concept: the package's retained probe images of it and its gate photos of it, the
/// command's verification images and augmented views of the command's image; questions: the
/// templates and the package's `verify` held-out wordings (never trained on).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Share of "who is this?" answers on the command's image not naming the concept.
    pub min_efficacy: f64,
    /// Share of template "who" / "is C ...?" answers on held-out images not naming C or
    /// confirming.
    pub min_generality: f64,
    /// Largest share of answers under held-out wordings that name C or confirm "is this C?".
    pub max_leak: f64,
    /// Largest leak allowed of each earlier forget (the concepts the starting adapter has
    /// forgotten), on the package's probe images of that person under the held-out
    /// wordings: a forget that would bring back someone forgotten is rolled back.
    pub max_earlier_leak: f64,
    /// Largest share of "who" answers on held-out images of C naming another known identity
    /// where the original model did not (what the update added; the receipt also carries the
    /// absolute share and the original model's).
    pub max_misattribution: f64,
    /// Smallest share of answers about C that are a refusal, `no` or a fictitious name, over
    /// the questions the original model did not answer with another known identity.
    pub min_well_formed: f64,
    /// Largest allowed drop of accuracy on other identities, in points (templates).
    pub max_specificity_drop_points: f64,
    /// The same under held-out wordings.
    pub max_specificity_paraphrased_drop_points: f64,
    /// Largest allowed drop of one other identity's accuracy, in points (both wordings, on
    /// that person's probe photos): the mean above can hide one look-alike no longer
    /// recognised. 100 = off.
    pub max_identity_drop_points: f64,
    /// Smallest share of text questions about C answered as before.
    pub min_factual_retention: f64,
    /// Largest allowed perplexity increase, in percent.
    pub max_fluency_increase_pct: f64,
    /// Roll back a candidate whose update ended its step budget with its own stopping rule
    /// still failing on C at the last check (its views' answers naming C or another person,
    /// or ill-formed, or one of the package's photos of C not refused; `CheckFindings`): the
    /// two probe images the gate holds out cannot see a misattribution of one photo in
    /// three, and the update's own check can. It also rolls back some good forgets
    /// (ARCHITECTURE.md has both).
    pub require_stopping_rule: bool,
    /// Augmented views of the command's image added to the held-out set.
    pub augmented_views: usize,
    /// How many of the package's gate photos of the concept (`Package::gate_photos`: photos
    /// no forget trains on or stops by) are added to the held-out set (0 = none). A forget
    /// that names a look-alike on some photos of C can refuse the probes' two; on six more,
    /// the gate sees it (ARCHITECTURE.md).
    pub gate_photos: usize,
    /// The same for each earlier forget's check (`max_earlier_leak`): how many of the
    /// package's gate photos of each person forgotten before are added to their probe photos
    /// (0 = the probes' only). Every earlier forget is checked at every forget, so this costs
    /// time with each one (ARCHITECTURE.md).
    pub earlier_gate_photos: usize,
    /// Other identities' retained probe images used (0 = all).
    pub max_other_images: usize,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            min_efficacy: 1.0,
            min_generality: 0.95,
            max_leak: 0.05,
            max_earlier_leak: 0.05,
            max_misattribution: 0.05,
            min_well_formed: 0.9,
            max_specificity_drop_points: 5.0,
            max_specificity_paraphrased_drop_points: 8.0,
            max_identity_drop_points: 100.0,
            // One of C's nine verification facts may change (8/9 = 0.889): a threshold of
            // 0.9 rolled back forgets over a single answer (bench sequential, 2026-11-30).
            min_factual_retention: 0.85,
            max_fluency_increase_pct: 15.0,
            require_stopping_rule: true,
            augmented_views: 3,
            gate_photos: 6,
            earlier_gate_photos: 0,
            max_other_images: 0,
        }
    }
}

fn default_provider() -> String {
    "cpu".into()
}
fn default_queue() -> usize {
    4
}
fn default_packet() -> usize {
    2 << 20
}
fn default_keep_alive() -> u64 {
    15
}
fn default_keep_versions() -> usize {
    crate::store::DEFAULT_KEEP_VERSIONS
}

fn default_journal_keep() -> usize {
    64
}
fn default_selfcheck() -> u64 {
    3600
}
fn yes() -> bool {
    true
}

/// Command-line overrides (each replaces the file's value).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub device_id: Option<String>,
    pub fleet: Option<String>,
    pub groups: Option<Vec<String>>,
    pub device_key: Option<PathBuf>,
    pub trust_store: Option<PathBuf>,
    pub model_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub broker: Option<String>,
    pub execution_provider: Option<String>,
}

/// All problems found in a configuration.
#[derive(Debug, thiserror::Error)]
#[error("configuration {source_name}: {}", problems.join("; "))]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<String>,
}

/// The broker address parsed from `broker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Parses `mqtt://host:port`, `tcp://host:port`, `mqtts://host:port` or `ssl://host:port`.
pub fn parse_broker(url: &str) -> Result<BrokerAddr, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("broker {url:?}: expected mqtt://host:port or mqtts://host:port"))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        s => {
            return Err(format!(
                "broker {url:?}: unknown scheme {s:?} (mqtt or mqtts)"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("broker {url:?}: bad port {p:?}"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(format!("broker {url:?}: no host"));
    }
    Ok(BrokerAddr {
        host: host.to_string(),
        port,
        tls,
    })
}

impl Config {
    /// Reads `path`, applies `ov`, resolves relative paths and checks everything.
    pub fn load(path: &Path, ov: &Overrides) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![format!("cannot read: {e}")],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base, ov).map_err(|mut e| {
            e.source_name = name;
            e
        })
    }

    /// Parses TOML text; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path, ov: &Overrides) -> Result<Config, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError {
            source_name: "(text)".into(),
            problems: vec![e.message().to_string()],
        })?;
        c.apply(ov);
        for p in [
            &mut c.device_key,
            &mut c.trust_store,
            &mut c.model_dir,
            &mut c.state_dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if c.gpu.trt_engine_cache_dir.is_none() {
            c.gpu.trt_engine_cache_dir = Some(c.state_dir.join("trt-cache"));
        }
        for p in [
            &mut c.ca_cert,
            &mut c.client_cert,
            &mut c.client_key,
            &mut c.gpu.trt_engine_cache_dir,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.check()?;
        Ok(c)
    }

    fn apply(&mut self, ov: &Overrides) {
        macro_rules! o {
            ($f:ident) => {
                if let Some(v) = &ov.$f {
                    self.$f = v.clone();
                }
            };
        }
        o!(device_id);
        o!(fleet);
        o!(groups);
        o!(device_key);
        o!(trust_store);
        o!(model_dir);
        o!(state_dir);
        o!(broker);
        o!(execution_provider);
    }

    /// Checks every field; returns all problems at once.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let ident = |field: &'static str, v: &str, p: &mut Vec<String>| {
            if let Err(e) = lethe_proto::ident::Ident::new(field, v) {
                p.push(format!("{field} {v:?}: {e}"));
            }
        };
        ident("device_id", &self.device_id, &mut p);
        ident("fleet", &self.fleet, &mut p);
        for g in &self.groups {
            ident("groups", g, &mut p);
        }
        for (field, path) in [
            ("device_key", &self.device_key),
            ("trust_store", &self.trust_store),
        ] {
            if !path.is_file() {
                p.push(format!("{field}: no file at {}", path.display()));
            }
        }
        if !self.model_dir.is_dir() {
            p.push(format!(
                "model_dir: no folder at {}",
                self.model_dir.display()
            ));
        }
        match parse_broker(&self.broker) {
            Err(e) => p.push(e),
            Ok(b) if !b.tls && (self.ca_cert.is_some() || self.client_cert.is_some()) => {
                p.push("ca_cert/client_cert given but the broker URL is not mqtts://".into())
            }
            Ok(_) => {}
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            p.push("client_cert and client_key go together".into());
        }
        for (f, v) in [
            ("ca_cert", &self.ca_cert),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ] {
            if let Some(v) = v {
                if !v.is_file() {
                    p.push(format!("{f}: no file at {}", v.display()));
                }
            }
        }
        if Provider::parse(&self.execution_provider).is_none() {
            p.push(format!(
                "execution_provider {:?}: expected cpu, cuda or tensorrt",
                self.execution_provider
            ));
        }
        if self.gpu.trt_workspace_mb > 1 << 20 || self.gpu.cuda_memory_limit_mb > 1 << 20 {
            p.push(
                "gpu.trt_workspace_mb and gpu.cuda_memory_limit_mb are MiB, at most 1048576".into(),
            );
        }
        if self.queue_capacity == 0 || self.queue_capacity > 64 {
            p.push("queue_capacity must be 1..=64".into());
        }
        if self.journal_keep == 0 || self.journal_keep > 4096 {
            p.push("journal_keep must be 1..=4096".into());
        }
        if self.keep_versions == 0 || self.keep_versions > 64 {
            p.push("keep_versions must be 1..=64".into());
        }
        if !(64 << 10..=16 << 20).contains(&self.max_packet_bytes) {
            p.push("max_packet_bytes must be 64 KiB..=16 MiB".into());
        }
        if self.max_packet_bytes < lethe_proto::envelope::MAX_ENVELOPE_BYTES + 1024 {
            p.push(format!(
                "max_packet_bytes {} is below the largest command envelope ({} bytes)",
                self.max_packet_bytes,
                lethe_proto::envelope::MAX_ENVELOPE_BYTES
            ));
        }
        if self.update.max_steps == 0 || self.update.max_steps > 1000 {
            p.push("update.max_steps must be 1..=1000".into());
        }
        if self.update.retry_reseeds > 4 {
            p.push("update.retry_reseeds must be 0..=4".into());
        }
        if self.update.views == 0 || self.update.views > 32 {
            p.push("update.views must be 1..=32".into());
        }
        if !(self.update.lr > 0.0 && self.update.lr <= 0.1) {
            p.push("update.lr must be in (0, 0.1]".into());
        }
        for (f, v) in [
            ("verify.min_efficacy", self.verify.min_efficacy),
            ("verify.min_generality", self.verify.min_generality),
        ] {
            if !v.is_finite() || v < 0.0 {
                p.push(format!(
                    "{f} must be a number >= 0 (above 1 forces a rollback)"
                ));
            }
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                source_name: "(config)".into(),
                problems: p,
            })
        }
    }

    /// The configured provider (checked at load; `cpu` if the field was never checked).
    pub fn provider(&self) -> Provider {
        Provider::parse(&self.execution_provider).unwrap_or(Provider::Cpu)
    }

    /// The GPU options in lethe-model's terms (MiB turned into bytes, 0 into "no limit").
    pub fn gpu_options(&self) -> GpuOptions {
        let mib = |v: u64| (v > 0).then(|| v << 20);
        GpuOptions {
            device_id: self.gpu.device_id,
            fp16: self.gpu.fp16,
            trt_engine_cache_dir: self.gpu.trt_engine_cache_dir.clone(),
            trt_workspace_bytes: mib(self.gpu.trt_workspace_mb),
            cuda_memory_limit_bytes: mib(self.gpu.cuda_memory_limit_mb),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports() {
        assert_eq!(
            parse_broker("mqtt://127.0.0.1:1884").unwrap(),
            BrokerAddr {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(parse_broker("mqtts://b.example").unwrap().port, 8883);
        assert!(parse_broker("http://x:1").is_err());
        assert!(parse_broker("mqtt://x:notaport").is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            device_id = "-bad"
            fleet = "lab"
            device_key = "/nonexistent/k"
            trust_store = "/nonexistent/t"
            model_dir = "/nonexistent/m"
            state_dir = "/tmp/x"
            broker = "http://h"
            execution_provider = "gpu"
        "#;
        let e = Config::from_toml(text, Path::new("/"), &Overrides::default()).unwrap_err();
        let all = e.problems.join("\n");
        for want in [
            "device_id",
            "device_key",
            "trust_store",
            "model_dir",
            "broker",
            "execution_provider",
        ] {
            assert!(all.contains(want), "{want} missing from {all}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e =
            Config::from_toml("devce_id = 1", Path::new("/"), &Overrides::default()).unwrap_err();
        assert!(e.problems[0].contains("unknown field"), "{:?}", e.problems);
    }

    /// A folder with the files a minimal config names, and that config's text.
    fn minimal() -> (tempfile::TempDir, String) {
        let d = tempfile::tempdir().unwrap();
        for f in ["k", "t"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        std::fs::create_dir(d.path().join("m")).unwrap();
        let text = r#"
            device_id = "cam-01"
            fleet = "lab"
            device_key = "k"
            trust_store = "t"
            model_dir = "m"
            state_dir = "s"
            broker = "mqtt://127.0.0.1:1883"
        "#;
        (d, text.to_string())
    }

    #[test]
    fn flags_override_the_file_and_relative_paths_follow_the_file() {
        let (d, text) = minimal();
        let ov = Overrides {
            device_id: Some("cam-02".into()),
            execution_provider: Some("tensorrt".into()),
            ..Default::default()
        };
        let c = Config::from_toml(&text, d.path(), &ov).unwrap();
        assert_eq!(c.device_id, "cam-02");
        assert_eq!(c.state_dir, d.path().join("s"));
        assert_eq!(c.provider(), Provider::TensorRt);
        assert_eq!(c.queue_capacity, 4);
        // GPU defaults: device 0, fp32, engine cache in the state folder, no limits.
        let g = c.gpu_options();
        assert_eq!(g.device_id, 0);
        assert!(!g.fp16);
        assert_eq!(g.trt_engine_cache_dir, Some(d.path().join("s/trt-cache")));
        assert_eq!(
            (g.trt_workspace_bytes, g.cuda_memory_limit_bytes),
            (None, None)
        );
    }

    #[test]
    fn gpu_options_are_read_from_their_table() {
        let (d, base) = minimal();
        let text = base
            + r#"
            execution_provider = "cuda"
            [gpu]
            device_id = 1
            fp16 = true
            trt_engine_cache_dir = "trt"
            trt_workspace_mb = 512
            cuda_memory_limit_mb = 2048
        "#;
        let c = Config::from_toml(&text, d.path(), &Overrides::default()).unwrap();
        assert_eq!(c.provider(), Provider::Cuda);
        let g = c.gpu_options();
        assert_eq!(g.device_id, 1);
        assert!(g.fp16);
        assert_eq!(g.trt_engine_cache_dir, Some(d.path().join("trt")));
        assert_eq!(g.trt_workspace_bytes, Some(512 << 20));
        assert_eq!(g.cuda_memory_limit_bytes, Some(2048 << 20));
        let bad = text.replace("fp16 = true", "fp16 = true\nfp64 = true");
        let e = Config::from_toml(&bad, d.path(), &Overrides::default()).unwrap_err();
        assert!(e.problems[0].contains("fp64"), "{:?}", e.problems);
    }
}
