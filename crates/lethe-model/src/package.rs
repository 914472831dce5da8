//! `Package`: an opened, verified model package folder (models/PACKAGE.md). Owns reading the
//! manifest, checking every listed file's size and SHA-256, resolving paths inside the folder,
//! loading the retained probe set, and writing a derived package with a new adapter.
//! Invariants: a `Package` value exists only for a folder whose files all matched the manifest
//! when it was opened; manifest paths never escape the folder; a derived copy writes
//! manifest.json last (after every other file is fsynced), so a crash mid-copy leaves no
//! openable package.

use crate::adapter::Adapter;
use crate::error::{ModelError, Result};
use crate::manifest::{FileEntry, Manifest, Parent, RetainSpec, PACKAGE_FORMAT};
use crate::npy;
use crate::tokenizer::Tokenizer;
use ndarray::{Array4, Ix4};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

/// File name of the manifest inside a package.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A verified model package.
#[derive(Debug, Clone)]
pub struct Package {
    dir: PathBuf,
    manifest: Manifest,
    raw: serde_json::Value,
}

/// One retained probe: a question about an image (or text-only) and its expected answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    /// Index into the probe images, `None` for text-only questions.
    pub image: Option<usize>,
    pub identity: u32,
    pub question: String,
    pub expect: String,
}

/// The retained probe set: images as model input and the probes over them.
#[derive(Debug, Clone)]
pub struct ProbeSet {
    pub seeds: Vec<u64>,
    /// `[N, 64, 64, 3]` f32 0..255.
    pub images: Array4<f32>,
    pub probes: Vec<Probe>,
}

impl ProbeSet {
    /// Every probe's question, about its image of `images` (or text-only).
    pub fn queries(&self) -> Vec<crate::generate::Query> {
        self.probes
            .iter()
            .map(|p| crate::generate::Query {
                question: p.question.clone(),
                image: p.image,
            })
            .collect()
    }
}

/// Question wordings of one set, per task; `{name}` marks the identity's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wordings {
    pub who: Vec<String>,
    pub is_this: Vec<String>,
    pub describe: Vec<String>,
    pub fact: Vec<String>,
    pub looks: Vec<String>,
}

impl Wordings {
    /// Every wording of every task.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.who
            .iter()
            .chain(&self.is_this)
            .chain(&self.describe)
            .chain(&self.fact)
            .chain(&self.looks)
    }
}

/// Held-out question wordings (`probes/paraphrases.json`): sentences no pretraining step,
/// template or forget ever used. `verify` gates the agent's commits; `eval` is for
/// benchmarks and tests only, so the numbers reported are on wordings nothing was tuned on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOutWordings {
    pub verify: Wordings,
    pub eval: Wordings,
}

/// One image of the retain set: an identity the model knows (`identity`, `name`) or a
/// stranger (both `None`), and the appearance description of the person shown.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RetainEntry {
    pub image: usize,
    pub identity: Option<u32>,
    pub name: Option<String>,
    pub description: String,
}

/// Labelled images. The retain set: separate from the probes, what a forget keeps the model
/// right on (what it must go on saying about everyone it still knows, and about strangers).
/// The gate's photos ([`Package::gate_photos`]): only verification looks at them.
#[derive(Debug, Clone)]
pub struct RetainSet {
    /// `[N, 64, 64, 3]` f32 0..255.
    pub images: Array4<f32>,
    pub entries: Vec<RetainEntry>,
}

impl RetainSet {
    /// The first `n` listed images of `name` (`[k,64,64,3]`, k <= n), `None` if none.
    pub fn images_of(&self, name: &str, n: usize) -> Option<Array4<f32>> {
        let idx: Vec<usize> = self
            .entries
            .iter()
            .filter(|e| e.name.as_deref() == Some(name))
            .map(|e| e.image)
            .take(n)
            .collect();
        (!idx.is_empty()).then(|| self.images.select(ndarray::Axis(0), &idx))
    }
}

#[derive(Deserialize)]
struct RetainFile {
    images: Vec<RetainEntry>,
}

#[derive(Deserialize)]
struct ProbesFile {
    #[serde(default)]
    seeds: Vec<u64>,
    probes: Vec<Probe>,
}

/// What to record about a derived adapter version.
#[derive(Debug, Clone)]
pub struct AdapterVersionInfo {
    /// The new `adapter_version` (e.g. `"forget-<command id>"`).
    pub version: String,
    /// What made it (e.g. the command id), recorded as `made_by`.
    pub made_by: Option<String>,
    /// Every concept the new adapter has forgotten, oldest first (`forgotten`; empty: absent).
    pub forgotten: Vec<String>,
}

/// Refuses any format but [`PACKAGE_FORMAT`], saying what an older one lacks.
fn check_format(format: &str) -> Result<()> {
    if format == PACKAGE_FORMAT {
        return Ok(());
    }
    let why = match format {
        "lethe-model-package/1" => {
            " (a package from before retain sets and held-out paraphrases: the forget and \
             its verification need both; rebuild it with models/tools/build.sh)"
        }
        "lethe-model-package/2" => {
            " (a package without the key/value-cache decoder graphs that generation runs on; \
             re-export it from its checkpoint with models/tools/export.py, which leaves every \
             other file as it was)"
        }
        _ => "",
    };
    Err(ModelError::Package(format!(
        "format is {format:?}, this build reads {PACKAGE_FORMAT:?}{why}"
    )))
}

impl Package {
    /// Opens a package folder: parses manifest.json and verifies every listed file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Package> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(ModelError::Package(format!(
                "{} is not a model package folder (no such directory)",
                dir.display()
            )));
        }
        let mpath = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&mpath).map_err(|e| ModelError::io(&mpath, e))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Manifest {
                path: mpath.clone(),
                source,
            })?;
        // The format first: an older package lacks fields this build requires, and its
        // owner needs to hear which format it is and how to convert it, not a missing field.
        check_format(raw["format"].as_str().unwrap_or("(none)"))?;
        let manifest: Manifest =
            serde_json::from_value(raw.clone()).map_err(|source| ModelError::Manifest {
                path: mpath.clone(),
                source,
            })?;
        let pkg = Package { dir, manifest, raw };
        pkg.check_structure()?;
        pkg.verify_files()?;
        Ok(pkg)
    }

    fn check_structure(&self) -> Result<()> {
        let m = &self.manifest;
        check_format(&m.format)?;
        for name in m.files.keys() {
            safe_relative(name)?;
        }
        let required = [
            &m.graphs.vision.file,
            &m.graphs.decoder.file,
            &m.graphs.decoder_prefix.file,
            &m.graphs.decoder_step.file,
            &m.graphs.train_step.file,
            &m.adapter.file,
            &m.probes.images,
            &m.probes.list,
            &m.probes.paraphrases,
            &m.retain.images,
            &m.retain.list,
        ];
        let gate = m.probes.gate.iter().flat_map(|g| [&g.images, &g.list]);
        let optional = m.graphs.train_grad.iter().map(|g| &g.file).chain(gate);
        for f in required.into_iter().chain(optional) {
            if !m.files.contains_key(f.as_str()) {
                return Err(ModelError::Package(format!(
                    "{f} is used but not listed in manifest.files"
                )));
            }
        }
        // The cache graphs' interface, which the engines bind by position.
        let kv = m.kv_cache;
        let (prefix, step) = (&m.graphs.decoder_prefix, &m.graphs.decoder_step);
        let (ins, outs) = (step.inputs.len(), step.outputs.len());
        if prefix.inputs.len() != 2
            || prefix.outputs.len() != 2 * kv.layers
            || ins != 2 * kv.layers + 4
            || outs != 2 * kv.layers + 1
        {
            return Err(ModelError::Package(format!(
                "the cache graphs do not match kv_cache ({} layers): decoder_prefix has {} \
                 inputs and {} outputs, decoder_step {ins} and {outs}",
                kv.layers,
                prefix.inputs.len(),
                prefix.outputs.len()
            )));
        }
        let adapter_bytes = m.files[&m.adapter.file].bytes;
        if m.adapter.dtype != "f32le" || adapter_bytes != 4 * m.adapter.len as u64 {
            return Err(ModelError::Package(format!(
                "adapter is {} bytes of {}, manifest says {} f32le values",
                adapter_bytes, m.adapter.dtype, m.adapter.len
            )));
        }
        let sp = m.special;
        let v = m.vocab.len() as i32;
        if [sp.pad, sp.bos, sp.sep, sp.eos]
            .iter()
            .any(|&t| t < 0 || t >= v)
        {
            return Err(ModelError::Package(
                "special token ids outside the vocabulary".into(),
            ));
        }
        if m.text_len < 3 || m.graphs.train_step.batch == 0 {
            return Err(ModelError::Package(
                "text_len or train batch is too small".into(),
            ));
        }
        if let Some(g) = &m.graphs.train_grad {
            if 2 * g.batch != m.graphs.train_step.batch
                || g.inputs != crate::train::GRAD_INPUTS
                || g.outputs != crate::train::GRAD_OUTPUTS
            {
                return Err(ModelError::Package(format!(
                    "{} must take half of the train batch ({}) with inputs {:?} and outputs \
                     {:?}; the manifest says batch {}, inputs {:?}, outputs {:?}",
                    g.file,
                    m.graphs.train_step.batch,
                    crate::train::GRAD_INPUTS,
                    crate::train::GRAD_OUTPUTS,
                    g.batch,
                    g.inputs,
                    g.outputs
                )));
            }
        }
        Ok(())
    }

    fn verify_files(&self) -> Result<()> {
        for (name, entry) in &self.manifest.files {
            let path = self.dir.join(name);
            let got = file_entry(&path).map_err(|e| ModelError::Integrity {
                file: name.clone(),
                reason: match &e {
                    ModelError::Io { source, .. } => format!("cannot read: {source}"),
                    other => other.to_string(),
                },
            })?;
            if got.bytes != entry.bytes {
                return Err(ModelError::Integrity {
                    file: name.clone(),
                    reason: format!(
                        "size is {} bytes, manifest says {} (package corrupt or tampered)",
                        got.bytes, entry.bytes
                    ),
                });
            }
            if !got.sha256.eq_ignore_ascii_case(&entry.sha256) {
                return Err(ModelError::Integrity {
                    file: name.clone(),
                    reason: format!(
                        "SHA-256 is {}, manifest says {} (package corrupt or tampered)",
                        got.sha256, entry.sha256
                    ),
                });
            }
        }
        Ok(())
    }

    /// The package folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A file of the package by its manifest-relative name.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// vision.onnx
    pub fn vision_path(&self) -> PathBuf {
        self.path(&self.manifest.graphs.vision.file)
    }

    /// decoder.onnx
    pub fn decoder_path(&self) -> PathBuf {
        self.path(&self.manifest.graphs.decoder.file)
    }

    /// decoder_prefix.onnx
    pub fn decoder_prefix_path(&self) -> PathBuf {
        self.path(&self.manifest.graphs.decoder_prefix.file)
    }

    /// decoder_step.onnx
    pub fn decoder_step_path(&self) -> PathBuf {
        self.path(&self.manifest.graphs.decoder_step.file)
    }

    /// train_step.onnx
    pub fn train_step_path(&self) -> PathBuf {
        self.path(&self.manifest.graphs.train_step.file)
    }

    /// train_grad.onnx, where the package has the half-batch gradient graph.
    pub fn train_grad_path(&self) -> Option<PathBuf> {
        self.manifest
            .graphs
            .train_grad
            .as_ref()
            .map(|g| self.path(&g.file))
    }

    /// adapter.bin
    pub fn adapter_path(&self) -> PathBuf {
        self.path(&self.manifest.adapter.file)
    }

    /// Text length `T`.
    pub fn text_len(&self) -> usize {
        self.manifest.text_len
    }

    /// Vocabulary size `V`.
    pub fn vocab_size(&self) -> usize {
        self.manifest.vocab.len()
    }

    /// Adapter length `P`.
    pub fn adapter_len(&self) -> usize {
        self.manifest.adapter.len
    }

    /// The train-step graph's fixed batch `Bt`.
    pub fn train_batch(&self) -> usize {
        self.manifest.graphs.train_step.batch
    }

    /// Image tokens per image (16).
    pub fn n_image_tokens(&self) -> usize {
        self.manifest.n_image_tokens
    }

    /// Feature width per image token (512).
    pub fn feature_dim(&self) -> usize {
        self.manifest.feature_dim
    }

    /// SHA-256 of adapter.bin as listed in the (verified) manifest.
    pub fn adapter_sha256(&self) -> &str {
        &self.manifest.files[&self.manifest.adapter.file].sha256
    }

    /// The package's tokenizer.
    pub fn tokenizer(&self) -> Tokenizer {
        Tokenizer::from_manifest(&self.manifest)
    }

    /// The package's adapter.
    pub fn adapter(&self) -> Result<Adapter> {
        Adapter::load(&self.adapter_path(), self.adapter_len())
    }

    fn images(&self, rel: &str) -> Result<Array4<f32>> {
        let ipath = self.path(rel);
        let images = npy::read_u8(&ipath)?;
        Ok(images
            .into_dimensionality::<Ix4>()
            .map_err(|e| ModelError::Npy {
                path: ipath.clone(),
                reason: format!("expected [N,64,64,3]: {e}"),
            })?
            .mapv(f32::from))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<T> {
        let path = self.path(rel);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|source| ModelError::Manifest { path, source })
    }

    /// The held-out question wordings.
    pub fn paraphrases(&self) -> Result<HeldOutWordings> {
        self.json(&self.manifest.probes.paraphrases)
    }

    /// The retain set.
    pub fn retain(&self) -> Result<RetainSet> {
        self.labelled(&self.manifest.retain, "retain")
    }

    /// The gate's photos (more photos of every identity that only verification looks at),
    /// `None` for a package made before them.
    pub fn gate_photos(&self) -> Result<Option<RetainSet>> {
        match &self.manifest.probes.gate {
            Some(spec) => Ok(Some(self.labelled(spec, "gate photo")?)),
            None => Ok(None),
        }
    }

    fn labelled(&self, spec: &RetainSpec, what: &str) -> Result<RetainSet> {
        let images = self.images(&spec.images)?;
        let file: RetainFile = self.json(&spec.list)?;
        let n = images.shape()[0];
        if let Some(e) = file.images.iter().find(|e| e.image >= n) {
            return Err(ModelError::Package(format!(
                "{what} entry refers to image {} of {n}",
                e.image
            )));
        }
        Ok(RetainSet {
            images,
            entries: file.images,
        })
    }

    /// The retained probes' questions and expected answers, without reading their images.
    pub fn probe_list(&self) -> Result<Vec<Probe>> {
        Ok(self.json::<ProbesFile>(&self.manifest.probes.list)?.probes)
    }

    /// The retained probe set.
    pub fn probes(&self) -> Result<ProbeSet> {
        let images = self.images(&self.manifest.probes.images)?;
        let file: ProbesFile = self.json(&self.manifest.probes.list)?;
        let n = images.shape()[0];
        if let Some(p) = file.probes.iter().find(|p| p.image.is_some_and(|i| i >= n)) {
            return Err(ModelError::Package(format!(
                "probe {:?} refers to image {:?} of {n}",
                p.question, p.image
            )));
        }
        Ok(ProbeSet {
            seeds: file.seeds,
            images,
            probes: file.probes,
        })
    }

    /// Writes a complete package at `dst` (which must not exist) with `adapter` as its
    /// adapter.bin and an updated manifest: `adapter_version`, `parent` (this package's
    /// adapter version and hash), `made_by`, and recomputed file hashes. Every file is
    /// fsynced; manifest.json is written last; the copy is re-opened (verified) and returned.
    pub fn write_copy_with_adapter(
        &self,
        dst: impl AsRef<Path>,
        adapter: &Adapter,
        info: &AdapterVersionInfo,
    ) -> Result<Package> {
        let dst = dst.as_ref();
        if adapter.len() != self.adapter_len() {
            return Err(ModelError::Adapter(format!(
                "new adapter has {} values, the package needs {}",
                adapter.len(),
                self.adapter_len()
            )));
        }
        if dst.exists() {
            return Err(ModelError::Package(format!(
                "{} already exists; a derived package needs a new folder",
                dst.display()
            )));
        }
        std::fs::create_dir_all(dst).map_err(|e| ModelError::io(dst, e))?;
        let mut files: BTreeMap<String, FileEntry> = BTreeMap::new();
        for name in self.manifest.files.keys() {
            let to = dst.join(name);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
            }
            if *name == self.manifest.adapter.file {
                adapter.save(&to)?;
            } else {
                copy_synced(&self.dir.join(name), &to)?;
            }
            files.insert(name.clone(), file_entry(&to)?);
        }
        let mut raw = self.raw.clone();
        let obj = raw
            .as_object_mut()
            .ok_or_else(|| ModelError::Package("manifest is not a JSON object".into()))?;
        let parent = Parent {
            adapter_version: self.manifest.adapter_version.clone(),
            adapter_sha256: self.adapter_sha256().to_string(),
        };
        obj.insert("adapter_version".into(), info.version.clone().into());
        obj.insert("parent".into(), to_json(&parent)?);
        match &info.made_by {
            Some(m) => obj.insert("made_by".into(), m.clone().into()),
            None => obj.remove("made_by"),
        };
        if info.forgotten.is_empty() {
            obj.remove("forgotten");
        } else {
            obj.insert("forgotten".into(), to_json(&info.forgotten)?);
        }
        obj.insert("files".into(), to_json(&files)?);
        let mut text =
            serde_json::to_string_pretty(&raw).map_err(|source| ModelError::Manifest {
                path: dst.join(MANIFEST_FILE),
                source,
            })?;
        text.push('\n');
        write_synced(&dst.join(MANIFEST_FILE), text.as_bytes())?;
        sync_dirs(dst, self.manifest.files.keys())?;
        Package::open(dst)
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|source| ModelError::Manifest {
        path: PathBuf::from(MANIFEST_FILE),
        source,
    })
}

/// Refuses manifest file names that are absolute or climb out of the package.
fn safe_relative(name: &str) -> Result<()> {
    let p = Path::new(name);
    let ok = !name.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(ModelError::Package(format!(
            "manifest lists {name:?}, which is not a plain path inside the package"
        )))
    }
}

/// Size and SHA-256 of a file, streamed.
pub fn file_entry(path: &Path) -> Result<FileEntry> {
    let mut f = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileEntry {
        sha256: hex::encode(h.finalize()),
        bytes,
    })
}

/// Writes `bytes` to `path` and fsyncs the file.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| ModelError::io(path, e))?;
    f.write_all(bytes).map_err(|e| ModelError::io(path, e))?;
    f.sync_all().map_err(|e| ModelError::io(path, e))
}

fn copy_synced(from: &Path, to: &Path) -> Result<()> {
    let mut src = File::open(from).map_err(|e| ModelError::io(from, e))?;
    let mut dst = File::create(to).map_err(|e| ModelError::io(to, e))?;
    std::io::copy(&mut src, &mut dst).map_err(|e| ModelError::io(to, e))?;
    dst.sync_all().map_err(|e| ModelError::io(to, e))
}

/// Fsyncs the package folder and every sub-folder holding a file.
fn sync_dirs<'a>(root: &Path, names: impl Iterator<Item = &'a String>) -> Result<()> {
    let mut dirs: Vec<PathBuf> = names
        .filter_map(|n| root.join(n).parent().map(Path::to_path_buf))
        .collect();
    dirs.push(root.to_path_buf());
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        File::open(&d)
            .and_then(|f| f.sync_all())
            .map_err(|e| ModelError::io(&d, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_must_stay_inside_the_package() {
        assert!(safe_relative("fixtures/in_lr.npy").is_ok());
        assert!(safe_relative("../secret").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("").is_err());
    }
}
