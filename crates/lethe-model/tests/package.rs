//! Integration tests of lethe-model against the bundled package (models/tiny-vlm): integrity
//! checks, tokenizer, image limits, and ONNX Runtime against the JAX fixtures. These tests need
//! ONNX Runtime (run scripts/fetch-ort once); without it they fail with the lookup message.

use lethe_model::fixtures::{max_abs_diff, MOMENT_REL_TOL};
use lethe_model::generate;
use lethe_model::{
    Adapter, AdapterVersionInfo, Engine, Fixtures, ModelError, OrtEngine, Package, SessionOptions,
    TrainStep,
};
use lethe_testkit::png_header;
use std::path::{Path, PathBuf};

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-vlm")
}

fn open() -> Package {
    Package::open(package_dir()).expect("bundled package opens")
}

/// A fresh temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("lethe-model-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_package(to: &Path) {
    let pkg = open();
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(
        package_dir().join("manifest.json"),
        to.join("manifest.json"),
    )
    .unwrap();
    for name in pkg.manifest().files.keys() {
        let dst = to.join(name);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(package_dir().join(name), dst).unwrap();
    }
}

#[test]
fn bundled_package_opens_and_exposes_its_contract() {
    let pkg = open();
    assert_eq!(pkg.text_len(), 28);
    assert_eq!(pkg.train_batch(), pkg.manifest().graphs.train_step.batch);
    assert_eq!(pkg.adapter().unwrap().len(), pkg.adapter_len());
    assert_eq!(pkg.adapter().unwrap().sha256_hex(), pkg.adapter_sha256());
    let probes = pkg.probes().unwrap();
    assert_eq!(probes.images.shape()[1..], [64, 64, 3]);
    assert!(!probes.probes.is_empty());
    assert!(pkg.manifest().prompts.who.len() >= 6);
}

#[test]
fn tampered_copy_is_refused_naming_the_file() {
    let tmp = TempDir::new("tamper");
    copy_package(&tmp.0);
    Package::open(&tmp.0).expect("an exact copy opens");
    let victim = tmp.0.join("decoder.onnx");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    let err = Package::open(&tmp.0).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Integrity { ref file, .. } if file == "decoder.onnx"));
    assert!(
        msg.contains("decoder.onnx") && msg.contains("SHA-256"),
        "{msg}"
    );
}

#[test]
fn a_format_2_package_is_refused_with_how_to_convert_it() {
    let tmp = TempDir::new("format2");
    copy_package(&tmp.0);
    // A format-2 package: no cache graphs, the old format string.
    let path = tmp.0.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["format"] = "lethe-model-package/2".into();
    for g in ["decoder_prefix", "decoder_step"] {
        let file = m["graphs"][g]["file"].as_str().unwrap().to_string();
        m["files"].as_object_mut().unwrap().remove(&file);
        m["graphs"].as_object_mut().unwrap().remove(g);
        std::fs::remove_file(tmp.0.join(file)).unwrap();
    }
    m.as_object_mut().unwrap().remove("kv_cache");
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let msg = Package::open(&tmp.0).unwrap_err().to_string();
    assert!(
        msg.contains("lethe-model-package/2")
            && msg.contains("key/value-cache")
            && msg.contains("export.py"),
        "{msg}"
    );
}

#[test]
fn cache_graphs_that_do_not_match_the_declared_cache_are_refused() {
    let tmp = TempDir::new("kvspec");
    copy_package(&tmp.0);
    let path = tmp.0.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["kv_cache"]["layers"] = 2.into();
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let msg = Package::open(&tmp.0).unwrap_err().to_string();
    assert!(
        msg.contains("kv_cache") && msg.contains("decoder_step"),
        "{msg}"
    );
}

#[test]
fn missing_package_file_is_refused_naming_it() {
    let tmp = TempDir::new("missing");
    copy_package(&tmp.0);
    std::fs::remove_file(tmp.0.join("probes/images.npy")).unwrap();
    let msg = Package::open(&tmp.0).unwrap_err().to_string();
    assert!(msg.contains("probes/images.npy"), "{msg}");
}

#[test]
fn the_gate_photos_show_every_identity_apart_from_probes_and_retain_set_and_are_optional() {
    let pkg = open();
    let gate = pkg
        .gate_photos()
        .unwrap()
        .expect("the bundled package has gate photos");
    let names = &pkg.manifest().world.names;
    assert_eq!(gate.images.shape()[1..], [64, 64, 3]);
    assert_eq!(gate.entries.len(), gate.images.shape()[0]);
    for (i, name) in names.iter().enumerate() {
        let n = gate
            .entries
            .iter()
            .filter(|e| e.identity == Some(i as u32) && e.name.as_deref() == Some(name))
            .count();
        assert!(n >= 4, "{name}: {n} gate photos");
        assert_eq!(gate.images_of(name, 4).unwrap().shape()[0], 4);
        assert_eq!(gate.images_of(name, 100).unwrap().shape()[0], n);
    }
    assert!(gate.images_of("nobody known", 4).is_none());
    // No gate photo is one of the probes' or the retain set's images.
    let probes = pkg.probes().unwrap();
    let retain = pkg.retain().unwrap();
    for (k, g) in gate.images.outer_iter().enumerate() {
        for other in probes.images.outer_iter().chain(retain.images.outer_iter()) {
            assert_ne!(g, other, "gate photo {k} is also a probe or retain image");
        }
    }
    // A package made before them opens, without them.
    let tmp = TempDir::new("nogate");
    copy_package(&tmp.0);
    let path = tmp.0.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let spec = m["probes"].as_object_mut().unwrap().remove("gate").unwrap();
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    assert!(Package::open(&tmp.0)
        .unwrap()
        .gate_photos()
        .unwrap()
        .is_none());
    // Named but not listed among the hashed files: refused.
    m["probes"]["gate"] = spec;
    m["files"]
        .as_object_mut()
        .unwrap()
        .remove("probes/gate.npy");
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let msg = Package::open(&tmp.0).unwrap_err().to_string();
    assert!(msg.contains("probes/gate.npy"), "{msg}");
}

#[test]
fn missing_package_folder_is_a_clear_error() {
    let msg = Package::open("/no/such/model").unwrap_err().to_string();
    assert!(msg.contains("/no/such/model"), "{msg}");
}

#[test]
fn derived_copy_has_the_new_adapter_and_records_its_parent() {
    let pkg = open();
    let tmp = TempDir::new("derive");
    let dst = tmp.0.join("v2");
    let mut a = pkg.adapter().unwrap();
    a.0[0] += 1.0;
    let info = AdapterVersionInfo {
        version: "forget-test".into(),
        made_by: Some("cmd-123".into()),
        forgotten: vec!["anna adler".into()],
    };
    let copy = pkg.write_copy_with_adapter(&dst, &a, &info).unwrap();
    assert_eq!(copy.manifest().adapter_version, "forget-test");
    assert_eq!(copy.manifest().made_by.as_deref(), Some("cmd-123"));
    assert_eq!(copy.manifest().forgotten, vec!["anna adler".to_string()]);
    assert!(pkg.manifest().forgotten.is_empty());
    let parent = copy.manifest().parent.clone().unwrap();
    assert_eq!(parent.adapter_sha256, pkg.adapter_sha256());
    assert_eq!(parent.adapter_version, pkg.manifest().adapter_version);
    assert_eq!(copy.adapter().unwrap(), a);
    assert_eq!(copy.adapter_sha256(), a.sha256_hex());
    assert_ne!(copy.adapter_sha256(), pkg.adapter_sha256());
    // The folder must be new.
    assert!(pkg.write_copy_with_adapter(&dst, &a, &info).is_err());
    // And the adapter length must match.
    let short = Adapter(vec![0.0; 3]);
    assert!(pkg
        .write_copy_with_adapter(tmp.0.join("v3"), &short, &info)
        .is_err());
}

#[test]
fn tokenizer_round_trips_every_prompt_and_names_unknown_words() {
    let pkg = open();
    let tok = pkg.tokenizer();
    let p = &pkg.manifest().prompts;
    for q in p.who.iter().chain(&p.describe) {
        assert_eq!(tok.decode(&tok.encode(q).unwrap()), *q);
    }
    let name = &pkg.manifest().world.names[0];
    let q = p.is_this[0].replace("{name}", name);
    assert_eq!(tok.decode(&tok.encode(&q).unwrap()), q);
    let err = tok.encode("who is zorblax ?").unwrap_err().to_string();
    assert!(err.contains("zorblax") && err.contains("closed"), "{err}");
}

#[test]
fn ort_train_step_split_serial_and_whole_match_the_jax_fixtures() {
    let pkg = open();
    let opts = SessionOptions::default();
    // On the CPU the package's half-batch graph splits the step over two sessions.
    let split = TrainStep::new(&pkg, &opts).unwrap();
    assert!(split.is_split() && split.can_guard());
    check_step_against_fixtures(&pkg, split, "split");
    // ... or runs its halves in turn in one session (the agent's default).
    let serial = TrainStep::serial(&pkg, &opts).unwrap();
    assert!(!serial.is_split() && serial.can_guard());
    check_step_against_fixtures(&pkg, serial, "serial");
    let whole = TrainStep::whole(&pkg, &opts).unwrap();
    assert!(!whole.is_split() && !whole.can_guard());
    check_step_against_fixtures(&pkg, whole, "whole");
}

/// A guarded step: the split and the serial step agree, report how much of the gradient the
/// guard took out, and step elsewhere than unguarded; the whole step refuses a guard and
/// changes nothing.
#[test]
fn a_guarded_step_is_the_same_split_or_serial_and_needs_the_half_batch_graph() {
    let pkg = open();
    let fx = Fixtures::load(&pkg).unwrap();
    let opts = SessionOptions::default();
    // The guard: the fixture batch's first half, asked to keep its cross-entropy.
    let guard = fx.batch.rows(0, 4);
    let mut split = TrainStep::new(&pkg, &opts).unwrap();
    let mut serial = TrainStep::serial(&pkg, &opts).unwrap();
    // The batch the step trains on: the fixture's with its CE weights negated (ascent on the
    // guard's own rows), so that the step conflicts with the guard.
    let mut batch = fx.batch.clone();
    batch.ce_weight.mapv_inplace(|w| -w);
    let (mut a, mut b) = (fx.state.clone(), fx.state.clone());
    let la = split
        .run(&mut a, &batch, Some(&guard), fx.lr, fx.w_ce, fx.w_kl)
        .unwrap();
    let lb = serial
        .run(&mut b, &batch, Some(&guard), fx.lr, fx.w_ce, fx.w_kl)
        .unwrap();
    let cut = la.guard_cut.expect("a guarded step reports its guard");
    assert!(
        cut > 0.0,
        "ascent on the guard's own rows conflicts with it: {cut}"
    );
    assert!((la.loss - lb.loss).abs() <= fx.tolerance.loss_abs as f32);
    assert!((cut - lb.guard_cut.unwrap()).abs() < 1e-3, "{la:?} {lb:?}");
    assert!(max_abs_diff(&a.params, &b.params) as f64 <= fx.tolerance.params_abs);
    // Unguarded, the same step is another one.
    let mut c = fx.state.clone();
    let lc = split
        .run(&mut c, &batch, None, fx.lr, fx.w_ce, fx.w_kl)
        .unwrap();
    assert_eq!(lc.guard_cut, None);
    assert!(max_abs_diff(&a.params, &c.params) > 1e-4);
    let mut whole = TrainStep::whole(&pkg, &opts).unwrap();
    let mut d = fx.state.clone();
    let err = whole
        .run(&mut d, &batch, Some(&guard), fx.lr, fx.w_ce, fx.w_kl)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("a guarded step needs train_grad.onnx"),
        "{err}"
    );
    assert_eq!(d, fx.state);
}

fn check_step_against_fixtures(pkg: &Package, mut step: TrainStep, how: &str) {
    let fx = Fixtures::load(pkg).unwrap();
    let mut state = fx.state.clone();
    let tol = fx.tolerance;
    let mut max_diff = [0f32; 3];
    for k in 0..fx.steps {
        let l = step
            .run(&mut state, &fx.batch, None, fx.lr, fx.w_ce, fx.w_kl)
            .unwrap();
        let e = fx.expect_losses.row(k);
        println!(
            "ort {how} step {k}: loss {:.7} ce {:.7} kl {:.7} gnorm {:.6} | jax loss {:.7} ce {:.7} kl {:.7} gnorm {:.6}",
            l.loss, l.ce, l.kl, l.grad_norm, e[0], e[1], e[2], e[3]
        );
        // Each step on its own, with `<=`: a NaN fails (a running f32::max would drop it).
        let parts = [
            ("loss", l.loss, e[0]),
            ("ce", l.ce, e[1]),
            ("kl", l.kl, e[2]),
        ];
        for (m, (what, got, want)) in max_diff.iter_mut().zip(parts) {
            let d = (got - want).abs();
            assert!(
                f64::from(d) <= tol.loss_abs,
                "step {k}: {what} {got} vs JAX {want}: diff {d} > {}",
                tol.loss_abs
            );
            *m = m.max(d);
        }
    }
    let dp = max_abs_diff(&state.params, &fx.expect_params);
    let dm = max_abs_diff(&state.adam_m, &fx.expect_adam_m);
    let dv = max_abs_diff(&state.adam_v, &fx.expect_adam_v);
    let [dl, dce, dkl] = max_diff;
    println!(
        "ORT {how} vs JAX over {} fed-back steps: max|loss| {dl:.3e}, max|ce| {dce:.3e}, \
         max|kl| {dkl:.3e}, max|params| {dp:.3e}, max|adam_m| {dm:.3e}, max|adam_v| {dv:.3e}, \
         step_out {}",
        fx.steps, state.step
    );
    assert!(
        (dp as f64) <= tol.params_abs,
        "params diff {dp} > {}",
        tol.params_abs
    );
    for (what, r) in fx.moment_diffs(&state) {
        assert!(
            r <= MOMENT_REL_TOL,
            "{what} is {r:.3e} of its scale off JAX's"
        );
    }
    assert_eq!(state.step, fx.state.step + fx.steps as f32);
}

#[test]
fn a_half_batch_graph_that_does_not_take_half_the_batch_is_refused() {
    let tmp = TempDir::new("gradspec");
    copy_package(&tmp.0);
    let path = tmp.0.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["graphs"]["train_grad"]["batch"] = 8.into();
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let msg = Package::open(&tmp.0).unwrap_err().to_string();
    assert!(
        msg.contains("train_grad.onnx must take half of the train batch (8)"),
        "{msg}"
    );
    // A package without it (format 3 before stop 23) still opens and steps whole.
    m["graphs"].as_object_mut().unwrap().remove("train_grad");
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let pkg = Package::open(&tmp.0).unwrap();
    assert!(pkg.train_grad_path().is_none());
    assert!(!TrainStep::new(&pkg, &SessionOptions::default())
        .unwrap()
        .is_split());
    // The serial step falls back to the whole one, which cannot be guarded.
    assert!(!TrainStep::serial(&pkg, &SessionOptions::default())
        .unwrap()
        .can_guard());
}

#[test]
fn ort_decoder_logits_match_the_fixture() {
    let pkg = open();
    let fx = Fixtures::load(&pkg).unwrap();
    let mut eng = OrtEngine::new(&pkg, &SessionOptions::default()).unwrap();
    let adapter = pkg.adapter().unwrap();
    let logits = eng
        .logits(
            adapter.as_slice(),
            fx.batch.features.view(),
            fx.batch.has_image.view(),
            fx.batch.tokens.view(),
        )
        .unwrap();
    let d = max_abs_diff(&logits, &fx.expect_logits);
    println!("ORT decoder logits vs JAX: max|diff| {d:.3e}");
    assert!(d <= 1e-3, "{d}");
}

#[test]
fn ort_decoder_refuses_wrong_shapes_with_a_clear_message() {
    let pkg = open();
    let fx = Fixtures::load(&pkg).unwrap();
    let mut eng = OrtEngine::new(&pkg, &SessionOptions::default()).unwrap();
    let err = eng
        .logits(
            &[0.0; 3],
            fx.batch.features.view(),
            fx.batch.has_image.view(),
            fx.batch.tokens.view(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter has 3 values"), "{err}");
}

/// The accuracy the retained probes must reach, from the package itself: the lowest per-task
/// held-out accuracy its training measured (`manifest.training.heldout_accuracy`, written by
/// models/tools/export.py), less three standard errors of a sample of `n` probes.
fn probe_accuracy_floor(n: usize) -> f64 {
    let text = std::fs::read_to_string(package_dir().join("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let per_task = m["training"]["heldout_accuracy"]
        .as_object()
        .expect("the package records its held-out accuracy per task");
    let worst = per_task
        .values()
        .map(|v| v.as_f64().expect("an accuracy is a number"))
        .fold(1.0, f64::min);
    assert!(
        !per_task.is_empty() && (0.0..=1.0).contains(&worst),
        "held-out accuracies: {per_task:?}"
    );
    worst - 3.0 * (worst * (1.0 - worst) / n as f64).sqrt()
}

#[test]
fn ort_answers_the_retained_probes_above_the_package_floor_and_the_same_alone_as_batched() {
    let pkg = open();
    let probes = pkg.probes().unwrap();
    let mut eng = OrtEngine::new(&pkg, &SessionOptions::default()).unwrap();
    let adapter = pkg.adapter().unwrap();
    let tok = pkg.tokenizer();
    let feats = generate::encode_images(&mut eng, probes.images.view()).unwrap();
    let queries = probes.queries();
    let all = generate::answer(&mut eng, adapter.as_slice(), &tok, feats.view(), &queries).unwrap();
    let correct = all
        .iter()
        .zip(&probes.probes)
        .filter(|(a, p)| **a == p.expect)
        .count();
    let floor = probe_accuracy_floor(all.len());
    println!(
        "ORT retained-probe accuracy: {correct}/{} (floor {floor:.3})",
        all.len()
    );
    assert!(
        correct as f64 >= floor * all.len() as f64,
        "ORT answers {correct} of {} retained probes as expected, under the floor {floor:.3}",
        all.len()
    );
    for i in [0, queries.len() / 2, queries.len() - 1] {
        let one = generate::answer(
            &mut eng,
            adapter.as_slice(),
            &tok,
            feats.view(),
            &queries[i..=i],
        )
        .unwrap();
        assert_eq!(one[0], all[i], "query {i} answered differently alone");
    }
    // Scores of the greedy answers are the best per-token choices: finite and <= 0.
    let sc = generate::score(
        &mut eng,
        adapter.as_slice(),
        &tok,
        feats.view(),
        &queries[..4],
        &all[..4],
    )
    .unwrap();
    assert!(sc.iter().flatten().all(|v| v.is_finite() && *v <= 0.0));
}

#[test]
fn image_loading_refuses_missing_files_non_images_and_huge_dimensions() {
    let tmp = TempDir::new("images");
    let missing = tmp.0.join("nope.png");
    let err = lethe_model::image::load_image(&missing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.png") && err.contains("cannot read"),
        "{err}"
    );

    let junk = tmp.0.join("junk.png");
    std::fs::write(&junk, b"this is not an image at all").unwrap();
    let err = lethe_model::image::load_image(&junk)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("junk.png") && err.contains("not an image"),
        "{err}"
    );

    let huge = tmp.0.join("huge.png");
    std::fs::write(&huge, png_header(100_000, 100_000)).unwrap();
    let err = lethe_model::image::load_image(&huge)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("huge.png") && err.contains("100000x100000"),
        "{err}"
    );

    let good = tmp.0.join("good.png");
    lethe_world_like_image().save(&good).unwrap();
    let a = lethe_model::image::load_image(&good).unwrap();
    assert_eq!(a.shape(), &[1, 64, 64, 3]);
}

fn lethe_world_like_image() -> image::RgbImage {
    image::RgbImage::from_fn(100, 80, |x, y| image::Rgb([x as u8, y as u8, 128]))
}

/// Asking for TensorRT never fails a session: on a library without the GPU providers (PyPI's
/// CPU build, as here and in CI) the sessions fall back to the CPU and say why; on a library
/// with them the sessions run there. Either way the numbers agree with the CPU session.
#[test]
fn a_gpu_provider_falls_back_along_its_chain_and_reports_the_one_used() {
    use lethe_model::runtime::available_providers;
    use lethe_model::{GpuOptions, Provider};
    let pkg = open();
    let fx = Fixtures::load(&pkg).unwrap();
    let available = available_providers().unwrap();
    assert!(available.iter().any(|p| p == "CPUExecutionProvider"));
    let mut gpu = SessionOptions::default();
    gpu.provider(Provider::TensorRt).gpu(GpuOptions {
        fp16: false,
        trt_engine_cache_dir: Some(std::env::temp_dir().join("lethe-trt-cache-test")),
        ..Default::default()
    });
    let mut cpu_step = TrainStep::new(&pkg, &SessionOptions::default()).unwrap();
    let mut gpu_step = TrainStep::new(&pkg, &gpu).unwrap();
    assert_eq!(cpu_step.provider().used, Provider::Cpu);
    assert_eq!(cpu_step.provider().note(), None);
    let report = gpu_step.provider().clone();
    println!("asked tensorrt, library offers {available:?}: {report:?}");
    if available.iter().any(|p| p == "TensorrtExecutionProvider") {
        assert_ne!(report.used, Provider::Cpu, "{report:?}");
    } else {
        assert_eq!(report.used, Provider::Cpu);
        let note = report.note().unwrap();
        assert!(
            note.contains("tensorrt: not in this ONNX Runtime library")
                && note.contains("cuda: not in this ONNX Runtime library"),
            "{note}"
        );
    }
    let (mut a, mut b) = (fx.state.clone(), fx.state.clone());
    let la = cpu_step
        .run(&mut a, &fx.batch, None, fx.lr, fx.w_ce, fx.w_kl)
        .unwrap();
    let lb = gpu_step
        .run(&mut b, &fx.batch, None, fx.lr, fx.w_ce, fx.w_kl)
        .unwrap();
    assert!((la.loss - lb.loss).abs() <= fx.tolerance.loss_abs as f32);
    assert!(max_abs_diff(&a.params, &b.params) as f64 <= fx.tolerance.params_abs);
    // The inference engine reports the same way.
    let eng = OrtEngine::new(&pkg, &gpu).unwrap();
    assert_eq!(eng.provider().used, report.used);
}
