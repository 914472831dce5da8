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
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release Lethe is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// File name of the library `scripts/fetch-ort` installs.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";
/// Environment variable naming the library to load (set it on a Jetson).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Where sessions run. Only the CPU provider exists today; CUDA and TensorRT (with CPU
/// fallback, for the Jetson build of ONNX Runtime) are a later issue and slot in here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    /// ONNX Runtime's default CPU execution provider.
    #[default]
    Cpu,
}

/// How ONNX Runtime sessions are built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Intra-op threads per session (default 2: a Jetson-class CPU shares its cores).
    pub intra_threads: usize,
    /// Execution provider.
    pub provider: Provider,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            intra_threads: 2,
            provider: Provider::Cpu,
        }
    }
}

impl SessionOptions {
    /// Sets the number of intra-op threads.
    pub fn intra_threads(&mut self, n: usize) -> &mut Self {
        self.intra_threads = n.max(1);
        self
    }

    /// Sets the execution provider.
    pub fn provider(&mut self, p: Provider) -> &mut Self {
        self.provider = p;
        self
    }
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
        "Lethe needs ONNX Runtime {ORT_VERSION} (API 1.31 or newer): run scripts/fetch-ort or \
         point {ORT_DYLIB_ENV} at a matching libonnxruntime.so"
    );
    let builder = ort::init_from(&path).map_err(|e| {
        format!(
            "cannot load ONNX Runtime from {}: {e}. {hint}",
            path.display()
        )
    })?;
    builder
        .with_name("lethe")
        .with_telemetry(false)
        .build()
        .map_err(|e| {
            format!(
                "cannot initialise ONNX Runtime from {}: {e}. {hint}",
                path.display()
            )
        })
}

/// Builds a session for one graph file with the given options.
pub(crate) fn build_session(path: &Path, opts: &SessionOptions) -> Result<Session> {
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
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(err)?
        .with_intra_threads(opts.intra_threads.max(1))
        .map_err(err)?
        // Warnings (e.g. unused initializers of JAX-exported graphs) are noise on a CLI.
        .with_log_level(LogLevel::Error)
        .map_err(err)?;
    match opts.provider {
        // The default provider list is CPU only; CUDA/TensorRT registration goes here.
        Provider::Cpu => {}
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
