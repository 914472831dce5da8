//! `ModelError`: the one error type of lethe-model. Every failure a caller can act on is a
//! variant with the offending path, file, word or shape in its message; errors from ONNX
//! Runtime, the `image` crate, I/O and JSON are kept as sources. Invariant: messages are one
//! line and name what was wrong, so a binary can print them as its whole diagnosis.

use std::path::PathBuf;

/// Errors from loading packages, preparing inputs and running graphs.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No ONNX Runtime library was found (no `ORT_DYLIB_PATH`, nothing under `.cache/ort`).
    #[error("{0}")]
    OrtNotFound(String),
    /// ONNX Runtime could not be loaded or initialised (wrong file, too old a version).
    /// Kept as text: the first failure is cached for the whole process.
    #[error("{0}")]
    OrtInit(String),
    /// An ONNX Runtime call failed.
    #[error("ONNX Runtime: {context}: {source}")]
    Ort {
        context: String,
        #[source]
        source: ort::Error,
    },
    /// Building an ONNX Runtime session failed (the builder's error is not `Send`, so it is
    /// kept as text).
    #[error("ONNX Runtime session for {file}: {message}")]
    OrtSession { file: String, message: String },
    /// Another engine (tract, in lethe-probe) failed.
    #[error("{engine}: {context}: {source}")]
    Engine {
        engine: &'static str,
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// manifest.json is not valid JSON or does not have the package format.
    #[error("{}: not a valid model manifest: {source}", .path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A package file is missing, has the wrong size or the wrong SHA-256.
    #[error("model package file {file}: {reason}")]
    Integrity { file: String, reason: String },
    /// The package is structurally wrong (format, missing entries, inconsistent sizes).
    #[error("invalid model package: {0}")]
    Package(String),
    /// A word outside the model's closed vocabulary.
    #[error(
        "the word {word:?} is not in the model's vocabulary (the vocabulary is closed: \
         only the {size} words of manifest.vocab can be used)"
    )]
    UnknownWord { word: String, size: usize },
    /// A question/answer pair does not fit into `text_len` tokens.
    #[error("text too long: {tokens} tokens with markers, the model takes at most {max}")]
    TextTooLong { tokens: usize, max: usize },
    /// An image file that cannot be used (too big, not an image, undecodable).
    #[error("{}: {reason}", .path.display())]
    Image { path: PathBuf, reason: String },
    /// An adapter vector of the wrong length or a malformed adapter file.
    #[error("adapter: {0}")]
    Adapter(String),
    /// A malformed or unsupported .npy file.
    #[error("{}: {reason}", .path.display())]
    Npy { path: PathBuf, reason: String },
    /// An input array whose shape does not match the graph.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A query refers to an image that is not in the features batch.
    #[error("query {query} refers to image {image}, but only {available} images were given")]
    NoSuchImage {
        query: usize,
        image: usize,
        available: usize,
    },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn ort(context: impl Into<String>) -> impl FnOnce(ort::Error) -> Self {
        let context = context.into();
        move |source| ModelError::Ort { context, source }
    }
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
