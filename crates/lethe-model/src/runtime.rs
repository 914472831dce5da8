//! Finding and initialising ONNX Runtime, which lethe-model loads at run time (`ort` with
//! `load-dynamic`): the same binary uses the PyPI CPU library here and JetPack's CUDA/TensorRT
//! build on a Jetson. Owns the process-wide ORT environment and session construction.
//! Invariants: the library is looked up in one documented order (`ORT_DYLIB_PATH`, then
//! `.cache/ort/<arch>/` beside the executable's ancestors, then in the source workspace) and
//! never by a silent fallback from an explicit `ORT_DYLIB_PATH`; ORT is initialised at most
//! once per process, and the first outcome (success or error) is the answer for every caller.

use crate::error::{ModelError, Result};
use ort::environment::Environment;
use ort::logging::LogLevel;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release Lethe is built and tested against (the one scripts/fetch-ort
/// installs).
pub const ORT_VERSION: &str = "1.31.1";
/// The oldest ONNX Runtime that loads: the `ort` crate is built at API level 19 (`api-19`),
/// the lowest at which the bundled graphs load (1.18 lacks a CPU `Trilu` kernel), so a
/// Jetson can use NVIDIA's 1.19+ CUDA/TensorRT builds. CI also runs the model tests on 1.19.2.
pub const ORT_MIN_VERSION: &str = "1.19";
/// File name of the library `scripts/fetch-ort` installs.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";
/// Environment variable naming the library to load (set it on a Jetson).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Intra-op threads of ONNX Runtime's one process-wide pool, which every session uses (a
/// Jetson-class CPU shares its cores with the camera's own work).
pub const ORT_THREADS: usize = 2;

/// An ONNX Runtime execution provider Lethe can ask for. On a Jetson the train step runs on
/// TensorRT or CUDA; here (PyPI's CPU library) only `Cpu` is in the library, and a session
/// asked for a GPU provider falls back along [`Provider::chain_from`] to the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Provider {
    /// NVIDIA TensorRT (registered together with CUDA, which takes the nodes TensorRT
    /// does not).
    TensorRt,
    /// NVIDIA CUDA.
    Cuda,
    /// ONNX Runtime's default CPU execution provider.
    #[default]
    Cpu,
}

impl Provider {
    /// Every provider, in fallback order.
    pub const ALL: [Provider; 3] = [Provider::TensorRt, Provider::Cuda, Provider::Cpu];

    /// The name used in configuration, status and receipts.
    pub fn name(self) -> &'static str {
        match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }

    /// Parses a configuration name (`tensorrt`, `cuda`, `cpu`).
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The name ONNX Runtime lists in `GetAvailableProviders`.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::TensorRt => "TensorrtExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Cpu => "CPUExecutionProvider",
        }
    }

    /// The fallback chain starting at `self`: tensorrt -> cuda -> cpu. Always ends with
    /// `Cpu`, so a missing GPU provider never fails a session.
    pub fn chain_from(self) -> Vec<Provider> {
        Provider::ALL.into_iter().filter(|p| *p >= self).collect()
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of the GPU providers (ignored by the CPU provider).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuOptions {
    /// CUDA device ordinal (a Jetson has one: 0).
    pub device_id: u32,
    /// Let TensorRT build fp16 engines. Off by default: the train step's gradients are
    /// checked against fp32 fixtures, and fp16 changes them.
    pub fp16: bool,
    /// Where TensorRT keeps built engines (building one takes minutes on a Jetson; the cache
    /// makes every later start fast). `None`: no cache.
    pub trt_engine_cache_dir: Option<PathBuf>,
    /// TensorRT builder workspace limit in bytes (`None`: TensorRT's default).
    pub trt_workspace_bytes: Option<u64>,
    /// CUDA memory arena limit in bytes (`None`: no limit). A Jetson shares its memory
    /// between CPU and GPU, so the camera pipeline needs this bounded.
    pub cuda_memory_limit_bytes: Option<u64>,
}

/// How ONNX Runtime sessions are built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The preferred execution provider; sessions fall back along its chain.
    pub provider: Provider,
    /// GPU provider options.
    pub gpu: GpuOptions,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            provider: Provider::Cpu,
            gpu: GpuOptions::default(),
        }
    }
}

impl SessionOptions {
    /// Sets the preferred execution provider.
    pub fn provider(&mut self, p: Provider) -> &mut Self {
        self.provider = p;
        self
    }

    /// Sets the GPU provider options.
    pub fn gpu(&mut self, g: GpuOptions) -> &mut Self {
        self.gpu = g;
        self
    }
}

/// Which provider a session actually runs on, and why any preferred one was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderReport {
    /// The provider the session was built with.
    pub used: Provider,
    /// One line per provider of the chain that was skipped or failed, in chain order.
    pub fallbacks: Vec<String>,
}

impl ProviderReport {
    /// The fallback lines joined into one note, `None` when the preferred provider is used.
    pub fn note(&self) -> Option<String> {
        (!self.fallbacks.is_empty()).then(|| self.fallbacks.join("; "))
    }
}

/// One attempt at building a session: the providers registered, in priority order. TensorRT
/// is registered with CUDA behind it (ONNX Runtime gives CUDA the nodes TensorRT rejects);
/// CPU registers nothing (it is ONNX Runtime's implicit last resort).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub provider: Provider,
    pub register: Vec<Provider>,
}

/// Plans the attempts for `preferred` given the providers the loaded library offers (names
/// as `GetAvailableProviders` gives them). Providers the library lacks are skipped with a
/// note; the plan always ends with the CPU attempt.
pub fn plan_attempts(preferred: Provider, available: &[String]) -> (Vec<Attempt>, Vec<String>) {
    let has = |p: Provider| available.iter().any(|a| a == p.ort_name());
    let mut attempts = Vec::new();
    let mut skipped = Vec::new();
    for p in preferred.chain_from() {
        match p {
            Provider::Cpu => attempts.push(Attempt {
                provider: p,
                register: Vec::new(),
            }),
            _ if !has(p) => skipped.push(format!(
                "{p}: not in this ONNX Runtime library (it offers {})",
                if available.is_empty() {
                    "nothing".to_string()
                } else {
                    available.join(", ")
                }
            )),
            Provider::TensorRt => attempts.push(Attempt {
                provider: p,
                register: if has(Provider::Cuda) {
                    vec![Provider::TensorRt, Provider::Cuda]
                } else {
                    vec![Provider::TensorRt]
                },
            }),
            Provider::Cuda => attempts.push(Attempt {
                provider: p,
                register: vec![Provider::Cuda],
            }),
        }
    }
    (attempts, skipped)
}

/// The ONNX Runtime provider options (keys as in ONNX Runtime's provider documentation) for
/// one GPU provider, from `gpu`. Empty for the CPU provider.
pub fn provider_settings(p: Provider, gpu: &GpuOptions) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match p {
        Provider::Cpu => return out,
        Provider::Cuda => {
            out.push(("device_id", gpu.device_id.to_string()));
            if let Some(limit) = gpu.cuda_memory_limit_bytes {
                out.push(("gpu_mem_limit", limit.to_string()));
            }
        }
        Provider::TensorRt => {
            out.push(("device_id", gpu.device_id.to_string()));
            out.push(("trt_fp16_enable", u8::from(gpu.fp16).to_string()));
            if let Some(dir) = &gpu.trt_engine_cache_dir {
                let dir = dir.display().to_string();
                out.push(("trt_engine_cache_enable", "1".into()));
                out.push(("trt_engine_cache_path", dir.clone()));
                out.push(("trt_timing_cache_enable", "1".into()));
                out.push(("trt_timing_cache_path", dir));
            }
            if let Some(bytes) = gpu.trt_workspace_bytes {
                out.push(("trt_max_workspace_size", bytes.to_string()));
            }
        }
    }
    out
}

/// The ORT registration of one GPU provider with `gpu`'s options, erroring instead of
/// falling back silently, so the caller knows which provider the session really has.
fn dispatch(p: Provider, gpu: &GpuOptions) -> Option<ort::ep::ExecutionProviderDispatch> {
    use ort::ep::{ArbitrarilyConfigurableExecutionProvider, TensorRT, CUDA};
    let settings = provider_settings(p, gpu);
    let ep = match p {
        Provider::Cpu => return None,
        Provider::Cuda => settings
            .into_iter()
            .fold(CUDA::default(), |ep, (k, v)| ep.with_arbitrary_config(k, v))
            .build(),
        Provider::TensorRt => settings
            .into_iter()
            .fold(TensorRT::default(), |ep, (k, v)| {
                ep.with_arbitrary_config(k, v)
            })
            .build(),
    };
    Some(ep.error_on_failure())
}

/// The execution providers the loaded ONNX Runtime library was built with.
pub fn available_providers() -> Result<Vec<String>> {
    environment()?;
    let mut out = Vec::new();
    for p in Provider::ALL {
        let ok = match p {
            Provider::TensorRt => <ort::ep::TensorRT as ort::ep::ExecutionProvider>::is_available(),
            Provider::Cuda => <ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available(),
            Provider::Cpu => Ok(true),
        }
        .map_err(|e| ModelError::OrtInit(format!("listing execution providers: {e}")))?;
        if ok {
            out.push(p.ort_name().to_string());
        }
    }
    Ok(out)
}

/// The architecture directory name under `.cache/ort/`.
pub fn arch_dir() -> &'static str {
    std::env::consts::ARCH
}

/// Candidate library paths in lookup order, without consulting `ORT_DYLIB_PATH`:
/// `<ancestor>/.cache/ort/<arch>/libonnxruntime.so.1.31.1` for every ancestor of the
/// executable's directory, then the same under the source workspace root.
pub fn candidate_paths(exe: Option<&Path>, workspace: &Path, arch: &str) -> Vec<PathBuf> {
    let rel = Path::new(".cache")
        .join("ort")
        .join(arch)
        .join(ORT_LIB_NAME);
    let mut out: Vec<PathBuf> = Vec::new();
    if let Some(exe) = exe {
        for dir in exe.ancestors().skip(1) {
            let p = dir.join(&rel);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    let p = workspace.join(&rel);
    if !out.contains(&p) {
        out.push(p);
    }
    out
}

/// Chooses the library: an explicit `env_value` wins (and must exist), else the first
/// existing candidate, else an error telling the user how to get one.
pub fn choose_library(
    env_value: Option<&Path>,
    candidates: &[PathBuf],
    exists: impl Fn(&Path) -> bool,
) -> Result<PathBuf> {
    if let Some(p) = env_value {
        if exists(p) {
            return Ok(p.to_path_buf());
        }
        return Err(ModelError::OrtNotFound(format!(
            "{ORT_DYLIB_ENV} is set to {}, but there is no file there",
            p.display()
        )));
    }
    if let Some(p) = candidates.iter().find(|p| exists(p)) {
        return Ok(p.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(ModelError::OrtNotFound(format!(
        "ONNX Runtime {ORT_VERSION} library not found: run scripts/fetch-ort (downloads it to \
         .cache/ort/{}/) or set {ORT_DYLIB_ENV} to a libonnxruntime.so; looked in: {}",
        arch_dir(),
        looked.join(", ")
    )))
}

/// Locates the ONNX Runtime library for this process.
pub fn locate_library() -> Result<PathBuf> {
    let env_value = std::env::var_os(ORT_DYLIB_ENV).filter(|v| !v.is_empty());
    let exe = std::env::current_exe().ok();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    let candidates = candidate_paths(exe.as_deref(), &workspace, arch_dir());
    choose_library(env_value.as_deref().map(Path::new), &candidates, |p| {
        p.is_file()
    })
}

static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment> {
    ENVIRONMENT
        .get_or_init(init_environment)
        .as_ref()
        .map_err(|msg| ModelError::OrtInit(msg.clone()))
}

/// The path ONNX Runtime was (or would be) loaded from, for diagnostics.
pub fn library_path() -> Option<PathBuf> {
    locate_library().ok()
}

fn init_environment() -> std::result::Result<Environment, String> {
    let path = locate_library().map_err(|e| e.to_string())?;
    let hint = format!(
        "Lethe needs ONNX Runtime {ORT_MIN_VERSION} or newer (tested with {ORT_VERSION}): run scripts/fetch-ort or \
         point {ORT_DYLIB_ENV} at a matching libonnxruntime.so"
    );
    let builder = ort::init_from(&path).map_err(|e| {
        format!(
            "cannot load ONNX Runtime from {}: {e}. {hint}",
            path.display()
        )
    })?;
    // One intra-op pool for every session, not one per session. The agent holds five
    // sessions (vision, prefix, step, train step) that run in turn on two cores; with a
    // pool each, the workers of one session spun on the cores the next session's run
    // needed (the update took 1.11 s; 0.62 s with spinning off, 0.54 s with one spinning
    // pool; the train step alone 27.6 ms without spinning, 18-25 ms with the one pool).
    let pool = ort::environment::GlobalThreadPoolOptions::default()
        .with_intra_threads(ORT_THREADS)
        .and_then(|p| p.with_spin_control(true))
        .map_err(|e| format!("ONNX Runtime thread pool: {e}"))?;
    let builder = builder
        .with_name("lethe")
        .with_telemetry(false)
        .with_global_thread_pool(pool);
    builder.build().map_err(|e| {
        format!(
            "cannot initialise ONNX Runtime from {}: {e}. {hint}",
            path.display()
        )
    })
}

/// Builds a session for one graph file, trying the providers of `opts.provider`'s chain in
/// order until one builds (a GPU provider that fails to register or to build the session is
/// noted and passed over; the CPU attempt is last). Returns the session and which provider
/// it runs on.
pub(crate) fn build_session(
    path: &Path,
    opts: &SessionOptions,
) -> Result<(Session, ProviderReport)> {
    let (attempts, mut fallbacks) = if opts.provider == Provider::Cpu {
        plan_attempts(Provider::Cpu, &[])
    } else {
        plan_attempts(opts.provider, &available_providers()?)
    };
    let mut last_err = None;
    for a in attempts {
        match build_with(path, opts, &a.register, Pool::Shared) {
            Ok(session) => {
                return Ok((
                    session,
                    ProviderReport {
                        used: a.provider,
                        fallbacks,
                    },
                ))
            }
            Err(e) if a.provider != Provider::Cpu => {
                fallbacks.push(format!("{}: {e}", a.provider));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.expect("the plan ends with the CPU attempt"))
}

/// Builds a CPU session that runs on the calling thread alone, outside the process-wide
/// pool: for the split train step, whose two halves run side by side, one per core. Sessions
/// of the same graph given the same `prepacked` share their prepacked weights.
pub(crate) fn build_one_thread_cpu_session(
    path: &Path,
    prepacked: &PrepackedWeights,
) -> Result<Session> {
    build_with(
        path,
        &SessionOptions::default(),
        &[],
        Pool::OwnOneThread(prepacked),
    )
}

/// Which threads a session's nodes run on.
#[derive(Clone, Copy)]
enum Pool<'a> {
    /// The process-wide pool of `ORT_THREADS`.
    Shared,
    /// The calling thread only, with prepacked weights shared with sibling sessions.
    OwnOneThread(&'a PrepackedWeights),
}

fn build_with(
    path: &Path,
    opts: &SessionOptions,
    register: &[Provider],
    pool: Pool<'_>,
) -> Result<Session> {
    let env = environment()?;
    let file = path.display().to_string();
    let err = |e: ort::Error<ort::session::builder::SessionBuilder>| ModelError::OrtSession {
        file: file.clone(),
        message: e.to_string(),
    };
    let builder = Session::builder(env).map_err(|e| ModelError::OrtSession {
        file: file.clone(),
        message: e.to_string(),
    })?;
    let mut builder = builder
        // `All` (ORT_ENABLE_ALL, 99) exists in every ONNX Runtime; `Level3` is 1.22+ only.
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(err)?
        // Warnings (e.g. unused initializers of JAX-exported graphs) are noise on a CLI.
        .with_log_level(LogLevel::Error)
        .map_err(err)?
        // ORT's CPU arena and memory patterns keep the largest allocations of every run
        // for good: with them the agent's peak during a forget was 349 MiB, without 179 MiB,
        // at the same speed (the graphs are small; malloc is not what a run waits on).
        .with_memory_pattern(false)
        .map_err(err)?;
    if let Pool::OwnOneThread(prepacked) = pool {
        builder = builder
            .with_independent_thread_pool()
            .map_err(err)?
            .with_intra_threads(1)
            .map_err(err)?
            .with_prepacked_weights(prepacked)
            .map_err(err)?;
    }
    let mut eps: Vec<_> = register
        .iter()
        .filter_map(|p| dispatch(*p, &opts.gpu))
        .collect();
    eps.push(ort::ep::CPU::default().with_arena_allocator(false).build());
    if !eps.is_empty() {
        builder = builder.with_execution_providers(eps).map_err(err)?;
    }
    builder
        .commit_from_file(path)
        .map_err(|e| ModelError::OrtSession {
            file: file.clone(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ps: &[Provider]) -> Vec<String> {
        ps.iter().map(|p| p.ort_name().to_string()).collect()
    }

    #[test]
    fn provider_names_round_trip_and_chains_end_with_cpu() {
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.name()), Some(p));
            assert_eq!(*p.chain_from().last().unwrap(), Provider::Cpu);
        }
        assert_eq!(Provider::parse("gpu"), None);
        assert_eq!(
            Provider::TensorRt.chain_from(),
            vec![Provider::TensorRt, Provider::Cuda, Provider::Cpu]
        );
        assert_eq!(
            Provider::Cuda.chain_from(),
            vec![Provider::Cuda, Provider::Cpu]
        );
        assert_eq!(Provider::Cpu.chain_from(), vec![Provider::Cpu]);
    }

    #[test]
    fn a_cpu_only_library_skips_the_gpu_providers_with_a_reason() {
        let (attempts, skipped) = plan_attempts(Provider::TensorRt, &names(&[Provider::Cpu]));
        assert_eq!(
            attempts,
            vec![Attempt {
                provider: Provider::Cpu,
                register: vec![]
            }]
        );
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].starts_with("tensorrt: not in this ONNX Runtime library"));
        assert!(skipped[1].starts_with("cuda: "));
        assert!(skipped[0].contains("CPUExecutionProvider"), "{skipped:?}");
    }

    #[test]
    fn tensorrt_is_registered_with_cuda_behind_it_then_cuda_then_cpu() {
        let (attempts, skipped) = plan_attempts(Provider::TensorRt, &names(&Provider::ALL));
        assert!(skipped.is_empty());
        let got: Vec<_> = attempts
            .iter()
            .map(|a| (a.provider, a.register.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Provider::TensorRt, vec![Provider::TensorRt, Provider::Cuda]),
                (Provider::Cuda, vec![Provider::Cuda]),
                (Provider::Cpu, vec![]),
            ]
        );
        // A library with TensorRT but no CUDA provider registers TensorRT alone.
        let (attempts, skipped) = plan_attempts(
            Provider::TensorRt,
            &names(&[Provider::TensorRt, Provider::Cpu]),
        );
        assert_eq!(attempts[0].register, vec![Provider::TensorRt]);
        assert_eq!(skipped.len(), 1);
        // Asking for CUDA never tries TensorRT.
        let (attempts, _) = plan_attempts(Provider::Cuda, &names(&Provider::ALL));
        assert!(attempts.iter().all(|a| a.provider != Provider::TensorRt));
    }

    #[test]
    fn the_report_note_is_empty_only_without_fallbacks() {
        let r = ProviderReport {
            used: Provider::Cuda,
            fallbacks: vec![],
        };
        assert_eq!(r.note(), None);
        let r = ProviderReport {
            used: Provider::Cpu,
            fallbacks: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.note().as_deref(), Some("a; b"));
    }

    #[test]
    fn gpu_options_become_onnx_runtime_provider_options() {
        let gpu = GpuOptions {
            device_id: 1,
            fp16: true,
            trt_engine_cache_dir: Some(PathBuf::from("/var/lib/lethe/trt")),
            trt_workspace_bytes: Some(1 << 30),
            cuda_memory_limit_bytes: Some(1 << 29),
        };
        assert!(provider_settings(Provider::Cpu, &gpu).is_empty());
        assert!(dispatch(Provider::Cpu, &gpu).is_none());
        let cuda = provider_settings(Provider::Cuda, &gpu);
        assert_eq!(
            cuda,
            vec![
                ("device_id", "1".into()),
                ("gpu_mem_limit", "536870912".into())
            ]
        );
        let trt: std::collections::BTreeMap<_, _> = provider_settings(Provider::TensorRt, &gpu)
            .into_iter()
            .collect();
        assert_eq!(trt["device_id"], "1");
        assert_eq!(trt["trt_fp16_enable"], "1");
        assert_eq!(trt["trt_engine_cache_enable"], "1");
        assert_eq!(trt["trt_engine_cache_path"], "/var/lib/lethe/trt");
        assert_eq!(trt["trt_max_workspace_size"], "1073741824");
        // Defaults: fp32, no cache, no limits.
        let trt = provider_settings(Provider::TensorRt, &GpuOptions::default());
        assert_eq!(
            trt,
            vec![("device_id", "0".into()), ("trt_fp16_enable", "0".into())]
        );
        assert_eq!(
            dispatch(Provider::TensorRt, &gpu).unwrap().name(),
            "TensorrtExecutionProvider"
        );
        assert_eq!(
            dispatch(Provider::Cuda, &gpu).unwrap().name(),
            "CUDAExecutionProvider"
        );
    }

    #[test]
    fn explicit_env_path_wins_over_cache() {
        let c = vec![PathBuf::from("/a/.cache/ort/x86_64/lib")];
        let got = choose_library(Some(Path::new("/jetpack/libort.so")), &c, |_| true).unwrap();
        assert_eq!(got, PathBuf::from("/jetpack/libort.so"));
    }

    #[test]
    fn missing_env_path_is_an_error_not_a_fallback() {
        let c = vec![PathBuf::from("/a/lib")];
        let err = choose_library(Some(Path::new("/nope.so")), &c, |p| {
            p != Path::new("/nope.so")
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ORT_DYLIB_PATH") && err.contains("/nope.so"),
            "{err}"
        );
    }

    #[test]
    fn first_existing_candidate_is_chosen() {
        let c = vec![
            PathBuf::from("/x/1"),
            PathBuf::from("/x/2"),
            PathBuf::from("/x/3"),
        ];
        let got = choose_library(None, &c, |p| p != Path::new("/x/1")).unwrap();
        assert_eq!(got, PathBuf::from("/x/2"));
    }

    #[test]
    fn nothing_found_tells_the_user_to_run_fetch_ort() {
        let c = vec![PathBuf::from("/x/1")];
        let err = choose_library(None, &c, |_| false).unwrap_err().to_string();
        assert!(
            err.contains("scripts/fetch-ort") && err.contains("ORT_DYLIB_PATH"),
            "{err}"
        );
        assert!(err.contains("/x/1"), "{err}");
    }

    #[test]
    fn candidates_walk_up_from_the_executable_then_the_workspace() {
        let c = candidate_paths(
            Some(Path::new("/r/target/debug/deps/t")),
            Path::new("/w"),
            "x86_64",
        );
        assert_eq!(
            c[0],
            Path::new("/r/target/debug/deps/.cache/ort/x86_64").join(ORT_LIB_NAME)
        );
        assert!(c.contains(&Path::new("/r/.cache/ort/x86_64").join(ORT_LIB_NAME)));
        assert_eq!(
            c.last().unwrap(),
            &Path::new("/w/.cache/ort/x86_64").join(ORT_LIB_NAME)
        );
    }
}
