//! tract against the JAX fixtures and against ONNX Runtime on the bundled package
//! (models/tiny-vlm). Needs ONNX Runtime for the parity test (scripts/fetch-ort).

use lethe_model::fixtures::{max_abs_diff, MOMENT_REL_TOL};
use lethe_model::{Engine, Fixtures, OrtEngine, Package, SessionOptions};
use lethe_probe::{guided_parity, probe_parity, TractEngine, TractTrainStep};
use std::path::Path;

fn open() -> Package {
    Package::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-vlm"))
        .expect("bundled package opens")
}

#[test]
fn tract_decoder_logits_match_the_fixture() {
    let pkg = open();
    let fx = Fixtures::load(&pkg).unwrap();
    let mut eng = TractEngine::new(&pkg).unwrap();
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
    println!("tract decoder logits vs JAX: max|diff| {d:.3e}");
    assert!(d <= 1e-3, "{d}");
    // The symbolic batch resolves per call: a 3-row slice gives the same rows.
    let part = eng
        .logits(
            adapter.as_slice(),
            fx.batch.features.slice(ndarray::s![2..5, .., ..]),
            fx.batch.has_image.slice(ndarray::s![2..5]),
            fx.batch.tokens.slice(ndarray::s![2..5, ..]),
        )
        .unwrap();
    let d3 = max_abs_diff(&part, &logits.slice(ndarray::s![2..5, .., ..]).to_owned());
    assert!(d3 <= 1e-4, "batch 3 vs batch 8 rows differ by {d3}");
}

#[test]
fn tract_train_step_split_and_whole_match_the_jax_fixtures() {
    let pkg = open();
    let whole = TractTrainStep::whole(&pkg).unwrap();
    assert!(!whole.is_split());
    check_tract_step(&pkg, whole, "whole");
    let step = TractTrainStep::new(&pkg).unwrap();
    // Split over two threads wherever the machine has two cores (CI's has).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(step.is_split(), cores >= 2);
    check_tract_step(&pkg, step, if cores >= 2 { "split" } else { "new" });
}

#[test]
fn a_whole_tract_step_refuses_a_guard_and_changes_nothing() {
    // The guard needs the gradient outside the graph (train_grad.onnx); train_step.onnx, the
    // step tract runs on one core, applies Adam itself.
    let pkg = open();
    let fx = Fixtures::load(&pkg).unwrap();
    let mut step = TractTrainStep::whole(&pkg).unwrap();
    let mut state = fx.state.clone();
    let err = step
        .run(
            &mut state,
            &fx.batch,
            Some(&fx.batch),
            fx.lr,
            fx.w_ce,
            fx.w_kl,
        )
        .unwrap_err();
    assert!(err.to_string().contains("guarded step needs"), "{err}");
    assert_eq!(state.params, fx.state.params);
    assert_eq!(state.adam_m, fx.state.adam_m);
    assert_eq!(state.step, fx.state.step);
}

fn check_tract_step(pkg: &lethe_model::Package, mut step: TractTrainStep, how: &str) {
    let fx = Fixtures::load(pkg).unwrap();
    let mut state = fx.state.clone();
    let mut max_loss = 0f32;
    for k in 0..fx.steps {
        let l = step
            .run(&mut state, &fx.batch, None, fx.lr, fx.w_ce, fx.w_kl)
            .unwrap();
        let e = fx.expect_losses.row(k);
        println!(
            "tract {how} step {k}: loss {:.7} ce {:.7} kl {:.7} gnorm {:.6} | jax loss {:.7} gnorm {:.6}",
            l.loss, l.ce, l.kl, l.grad_norm, e[0], e[3]
        );
        let d = (l.loss - e[0]).abs();
        assert!(!d.is_nan(), "tract loss is NaN at step {k}");
        max_loss = max_loss.max(d);
    }
    let dp = max_abs_diff(&state.params, &fx.expect_params);
    let dm = max_abs_diff(&state.adam_m, &fx.expect_adam_m);
    let dv = max_abs_diff(&state.adam_v, &fx.expect_adam_v);
    println!(
        "tract {how} vs JAX over {} fed-back steps: max|loss| {max_loss:.3e}, max|params| {dp:.3e}, \
         max|adam_m| {dm:.3e}, max|adam_v| {dv:.3e}",
        fx.steps
    );
    assert!(max_loss <= 1e-3, "loss diff {max_loss}");
    assert!(dp <= 2e-3, "params diff {dp}");
    for (what, r) in fx.moment_diffs(&state) {
        assert!(
            r <= MOMENT_REL_TOL,
            "{what} is {r:.3e} of its scale off JAX's"
        );
    }
}

#[test]
fn ort_and_tract_give_the_same_greedy_answers_on_every_retained_probe() {
    let pkg = open();
    let adapter = pkg.adapter().unwrap();
    let mut ort = OrtEngine::new(&pkg, &SessionOptions::default()).unwrap();
    let mut tract = TractEngine::new(&pkg).unwrap();
    let r = probe_parity(&mut ort, &mut tract, &pkg, adapter.as_slice()).unwrap();
    println!(
        "ORT vs tract on {} retained probes: {} answers equal, accuracy ort {}/{} tract {}/{}, \
         max|feature diff| {:.3e}, max|logit diff| {:.3e}",
        r.probes,
        r.agree,
        r.a_correct,
        r.probes,
        r.b_correct,
        r.probes,
        r.max_feature_diff,
        r.max_logit_diff
    );
    for m in &r.mismatches {
        println!(
            "  mismatch {}: {:?}: ort {:?} tract {:?}",
            m.index, m.question, m.a, m.b
        );
    }
    assert!(
        r.all_agree(),
        "{} of {} answers differ",
        r.probes - r.agree,
        r.probes
    );
    // Each engine decodes from its own vision features: bound them as tightly as the logits.
    assert!(
        r.max_feature_diff <= 1e-3,
        "max feature diff {}",
        r.max_feature_diff
    );
    assert!(
        r.max_logit_diff <= 1e-3,
        "max logit diff {}",
        r.max_logit_diff
    );
}

#[test]
fn guided_answers_are_the_greedy_answers_on_both_engines_whatever_the_guess() {
    let pkg = open();
    let adapter = pkg.adapter().unwrap();
    let mut ort = OrtEngine::new(&pkg, &SessionOptions::default()).unwrap();
    let mut tract = TractEngine::new(&pkg).unwrap();
    for engine in [&mut ort as &mut dyn Engine, &mut tract] {
        let diff = guided_parity(engine, &pkg, adapter.as_slice()).unwrap();
        assert!(
            diff.is_empty(),
            "{}: {} guided answers differ from greedy, first {:?}",
            engine.name(),
            diff.len(),
            diff.first()
        );
    }
}

/// Teacher forcing runs on the cache graphs (`generate::forward`: decoder_prefix once per
/// image, then decoder_step over every text position) instead of decoder.onnx, which an
/// agent no longer loads. It must be the same function: on both engines, against the whole
/// decoder and the JAX fixture, with text-only rows and a repeated image.
#[test]
fn forward_on_the_cache_graphs_is_the_whole_decoder() {
    let pkg = open();
    let fx = Fixtures::load(&pkg).unwrap();
    let adapter = pkg.adapter().unwrap();
    let b = &fx.batch;
    let images: Vec<Option<usize>> = b
        .has_image
        .iter()
        .enumerate()
        .map(|(r, &h)| (h > 0.0).then_some(r))
        .collect();
    assert!(images.iter().any(Option::is_none) && images.iter().any(Option::is_some));
    let engines: Vec<Box<dyn Engine>> = vec![
        Box::new(OrtEngine::new(&pkg, &SessionOptions::default()).unwrap()),
        Box::new(TractEngine::new(&pkg).unwrap()),
    ];
    for mut e in engines {
        let whole = e
            .logits(
                adapter.as_slice(),
                b.features.view(),
                b.has_image.view(),
                b.tokens.view(),
            )
            .unwrap();
        let cached = lethe_model::generate::forward(
            e.as_mut(),
            adapter.as_slice(),
            b.features.view(),
            &images,
            b.tokens.view(),
        )
        .unwrap();
        let d = max_abs_diff(&cached, &whole);
        let dj = max_abs_diff(&cached, &fx.expect_logits);
        println!(
            "{}: cache graphs vs decoder.onnx {d:.3e}, vs JAX {dj:.3e}",
            e.name()
        );
        assert!(d <= 1e-4, "{}: {d}", e.name());
        assert!(dj <= 1e-3, "{}: {dj}", e.name());
        // Rows that share an image share one prefix row: the first row twice gives the
        // same logits twice.
        let twice = [images[0], images[0]];
        let tk = b.tokens.select(ndarray::Axis(0), &[0, 0]);
        let two = lethe_model::generate::forward(
            e.as_mut(),
            adapter.as_slice(),
            b.features.view(),
            &twice,
            tk.view(),
        )
        .unwrap();
        assert_eq!(
            two.slice(ndarray::s![0, .., ..]),
            two.slice(ndarray::s![1, .., ..])
        );
    }
}

/// tract's kernels split work between threads by output panels and rows, never inside a
/// sum: verification on two threads gives bit for bit the logits of one.
#[test]
fn tract_on_two_threads_computes_what_one_thread_does() {
    let pkg = open();
    let fx = Fixtures::load(&pkg).unwrap();
    let adapter = pkg.adapter().unwrap();
    let b = &fx.batch;
    let images: Vec<Option<usize>> = (0..b.tokens.nrows()).map(Some).collect();
    let run = |threads: usize| {
        let mut e = TractEngine::with_threads(&pkg, threads).unwrap();
        assert_eq!(e.threads(), threads);
        lethe_model::generate::forward(
            &mut e,
            adapter.as_slice(),
            b.features.view(),
            &images,
            b.tokens.view(),
        )
        .unwrap()
    };
    let one = run(1);
    let two = run(2);
    assert!(one
        .iter()
        .zip(&two)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}
