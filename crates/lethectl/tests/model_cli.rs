//! `lethectl model ...` end to end: ask (image, text-only, both engines), eval on a few
//! seeds, and every bad input exits 2 with a one-line cause; and `bench sequential`'s
//! measurement after its last forget. Uses the bundled package
//! (models/tiny-vlm) and needs ONNX Runtime (scripts/fetch-ort).

use lethe_testkit::png_header;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-vlm")
}

fn lethectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lethectl"))
        .args(args)
        .output()
        .expect("run lethectl")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("lethectl-model-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit 2 and a one-line error on stderr containing every needle.
fn assert_bad_input(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {} stderr: {err}",
        stdout(o)
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} missing in: {err}");
    }
}

/// Asserts that `out` is one answer: a line of words from the package's vocabulary, at
/// least one of them, none of them a special token.
fn assert_one_answer(out: &str, engine: &str) {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("manifest.json")).unwrap())
            .unwrap();
    let vocab: Vec<&str> = m["vocab"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .filter(|w| !w.starts_with('<'))
        .collect();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(!words.is_empty(), "{engine}: an empty answer: {out:?}");
    for w in &words {
        assert!(
            vocab.contains(w),
            "{engine}: {w:?} is not a word of the model: {out:?}"
        );
    }
}

fn render(tmp: &TempDir, identity: u32, seed: u64) -> String {
    let out = tmp.path(&format!("id{identity}-{seed}.png"));
    let o = lethectl(&[
        "world",
        "render",
        "--identity",
        &identity.to_string(),
        "--seed",
        &seed.to_string(),
        "--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn ask_about_an_image_prints_one_answer_with_either_engine() {
    let tmp = TempDir::new("ask");
    let img = render(&tmp, 0, 1_900_000);
    let model = model_dir().display().to_string();
    let mut answers = Vec::new();
    for engine in ["ort", "tract"] {
        let o = lethectl(&[
            "model",
            "ask",
            "--model",
            &model,
            "--image",
            &img,
            "--prompt",
            "who is this ?",
            "--engine",
            engine,
        ]);
        assert!(o.status.success(), "{engine}: {}", stderr(&o));
        let out = stdout(&o);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert_one_answer(&out, engine);
        answers.push(out);
    }
    // Agreement means something only between two real answers (checked above).
    assert_eq!(answers[0], answers[1], "ORT and tract disagree");
}

#[test]
fn ask_without_an_image_answers_text_only() {
    let model = model_dir().display().to_string();
    let o = lethectl(&[
        "model",
        "ask",
        "--model",
        &model,
        "--prompt",
        "who is anna adler?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1);
    assert_one_answer(&stdout(&o), "ort");
}

#[test]
fn eval_on_two_seeds_reports_every_task_with_counts() {
    let model = model_dir().display().to_string();
    let o = lethectl(&[
        "model",
        "eval",
        "--model",
        &model,
        "--seeds",
        "1000000..1000002",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON report");
    let total = |t: &str| {
        v["tasks"][t]["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("task {t}"))
    };
    // Every training wording of every task, from the package's own manifest.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir().join("manifest.json")).unwrap())
            .unwrap();
    let wordings = |t: &str| {
        let n = manifest["prompts"][t].as_array().map_or(0, Vec::len) as u64;
        assert!(n > 0, "the manifest has no {t} wordings");
        n
    };
    assert_eq!(v["images"], 48);
    assert_eq!(total("who"), 48 * wordings("who"));
    assert_eq!(total("is_this_yes"), 48 * wordings("is_this"));
    assert_eq!(total("is_this_no"), 48 * wordings("is_this"));
    assert_eq!(total("describe"), 48 * wordings("describe"));
    assert_eq!(total("facts"), 24 * wordings("fact"));
    assert_eq!(total("looks"), 24 * wordings("looks"));
    assert_eq!(v["split"], "held-out");
    let acc = v["overall"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    // "who" per identity: every identity once, in the world's order, adding up to the task.
    let per = v["who_per_identity"].as_array().expect("who_per_identity");
    assert_eq!(per.len(), 24);
    assert_eq!(per[0][0], "anna adler");
    let sum = |k: &str| per.iter().map(|e| e[1][k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("total"), total("who"));
    assert_eq!(
        sum("correct"),
        v["tasks"]["who"]["correct"].as_u64().unwrap()
    );
    assert!(per.iter().all(|e| e[1]["total"] == 2 * wordings("who")));

    let o = lethectl(&[
        "model",
        "eval",
        "--model",
        &model,
        "--seeds",
        "1000000..1000001",
        "--per-identity",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("overall"));
    assert!(out.lines().any(|l| l.starts_with("yuri zimmer ")), "{out}");
}

#[test]
fn missing_model_folder_is_a_one_line_error() {
    let o = lethectl(&[
        "model",
        "ask",
        "--model",
        "/no/such/model",
        "--prompt",
        "who is this ?",
    ]);
    assert_bad_input(&o, &["/no/such/model"]);
}

#[test]
fn tampered_package_is_refused_naming_the_file() {
    let tmp = TempDir::new("tamper");
    let dst = tmp.0.join("pkg");
    let src = model_dir();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("manifest.json")).unwrap()).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("manifest.json"), dst.join("manifest.json")).unwrap();
    for name in manifest["files"].as_object().unwrap().keys() {
        std::fs::create_dir_all(dst.join(name).parent().unwrap()).unwrap();
        std::fs::copy(src.join(name), dst.join(name)).unwrap();
    }
    let mut bytes = std::fs::read(dst.join("adapter.bin")).unwrap();
    bytes[100] ^= 0x80;
    std::fs::write(dst.join("adapter.bin"), bytes).unwrap();
    let o = lethectl(&[
        "model",
        "ask",
        "--model",
        dst.to_str().unwrap(),
        "--prompt",
        "who is this ?",
    ]);
    assert_bad_input(&o, &["adapter.bin", "SHA-256"]);
}

#[test]
fn bad_images_are_one_line_errors_naming_the_file() {
    let tmp = TempDir::new("images");
    let model = model_dir().display().to_string();
    let ask = |img: &str| {
        lethectl(&[
            "model",
            "ask",
            "--model",
            &model,
            "--image",
            img,
            "--prompt",
            "who is this ?",
        ])
    };

    let missing = tmp.path("missing.png");
    assert_bad_input(&ask(&missing), &["missing.png", "cannot read"]);

    let junk = tmp.path("junk.jpg");
    std::fs::write(&junk, b"GIF? no, just text").unwrap();
    assert_bad_input(&ask(&junk), &["junk.jpg", "not an image"]);

    let huge = tmp.path("huge.png");
    std::fs::write(&huge, png_header(100_000, 100_000)).unwrap();
    assert_bad_input(&ask(&huge), &["huge.png", "100000x100000", "4096"]);
}

#[test]
fn words_outside_the_vocabulary_are_named() {
    let model = model_dir().display().to_string();
    let o = lethectl(&[
        "model",
        "ask",
        "--model",
        &model,
        "--prompt",
        "who is gandalf ?",
    ]);
    assert_bad_input(&o, &["\"gandalf\"", "closed"]);
}

#[test]
fn unknown_engine_is_a_one_line_error() {
    let model = model_dir().display().to_string();
    let o = lethectl(&[
        "model",
        "ask",
        "--model",
        &model,
        "--prompt",
        "who is this ?",
        "--engine",
        "onnx",
    ]);
    assert_bad_input(&o, &["unknown engine", "\"onnx\""]);
}

#[test]
fn a_file_that_is_not_onnx_runtime_is_a_clear_error() {
    let tmp = TempDir::new("badort");
    let fake = tmp.path("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let model = model_dir().display().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_lethectl"))
        .args([
            "model",
            "ask",
            "--model",
            &model,
            "--prompt",
            "who is anna adler ?",
        ])
        .env("ORT_DYLIB_PATH", &fake)
        .output()
        .unwrap();
    assert_bad_input(
        &o,
        &[
            "cannot load ONNX Runtime",
            "libonnxruntime.so",
            "scripts/fetch-ort",
        ],
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_with_the_sigpipe_status() {
    // The reader is gone before lethectl starts: its first print meets a broken pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_lethectl"))
        .args(["world", "list"])
        .stdout(writer)
        .output()
        .expect("run lethectl");
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert!(stderr(&out).is_empty(), "no panic report: {}", stderr(&out));
}

#[test]
fn a_sequential_run_measures_the_identities_it_never_targeted_after_its_last_forget() {
    let model = model_dir().display().to_string();
    let o = lethectl(&[
        "bench",
        "sequential",
        "--model",
        &model,
        "--ids",
        "3",
        "--json",
        "--final-others",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON document");
    let row = &v["rows"][0];
    assert_eq!(row["verdict"], "committed", "{row}");
    let end = &v["never_targeted"];
    let names: Vec<&str> = end["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 23, "{names:?}");
    assert!(!names.contains(&"dmitri dietz"), "{names:?}");
    assert_eq!(end["photos_each"], 2);
    // On the photos the row measured (--others 2), after the one committed forget, the end
    // measurement is the row's remaining-identities accuracy.
    let f = |x: &serde_json::Value| x.as_f64().unwrap();
    assert!(
        (f(&end["accuracy"]) - f(&row["remaining_accuracy"])).abs() < 1e-9,
        "{v}"
    );
    assert!((f(&end["accuracy_before"]) - f(&row["remaining_accuracy_before"])).abs() < 1e-9);
    let points = 100.0 * (f(&end["accuracy_before"]) - f(&end["accuracy"]));
    assert!((f(&end["drop_points"]) - points).abs() < 1e-6, "{v}");
}
