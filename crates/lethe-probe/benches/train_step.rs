//! `cargo bench -p lethe-probe`: one train step of the bundled package in ONNX Runtime and in
//! tract (median of N after warm-up) next to the JAX jit time recorded in the manifest, and
//! greedy generation throughput over the retained probe set per engine. Plain `main`
//! (`harness = false`); N from `LETHE_BENCH_N` (default 20).

use lethe_model::generate;
use lethe_model::{Engine, Fixtures, OrtEngine, Package, SessionOptions, TrainStep};
use lethe_probe::{TractEngine, TractTrainStep};
use std::path::Path;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time_n(n: usize, warm: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn main() {
    let n: usize = std::env::var("LETHE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let pkg = Package::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-vlm"))
        .expect("bundled package");
    let fx = Fixtures::load(&pkg).expect("fixtures");
    let opts = SessionOptions::default();

    let t = Instant::now();
    let mut ort_step = TrainStep::new(&pkg, &opts).expect("ORT train step");
    let ort_load = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut tract_step = TractTrainStep::new(&pkg).expect("tract train step");
    let tract_load = t.elapsed().as_secs_f64();

    let ort_ms = time_n(n, 3, || {
        let mut s = fx.state.clone();
        ort_step
            .run(&mut s, &fx.batch, fx.lr, fx.w_ce, fx.w_kl)
            .expect("ORT step");
    });
    let tract_ms = time_n(n, 3, || {
        let mut s = fx.state.clone();
        tract_step
            .run(&mut s, &fx.batch, fx.lr, fx.w_ce, fx.w_kl)
            .expect("tract step");
    });
    let jax = fx.jax_jit_step_ms;

    println!(
        "train step of {} (Bt={}, P={}), median of {n} after 3 warm-ups, ORT {} intra-op threads",
        pkg.manifest().model_id,
        pkg.train_batch(),
        pkg.adapter_len(),
        opts.intra_threads
    );
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>9}",
        "engine", "step ms", "vs ORT", "vs JAX", "load s"
    );
    let vs_jax = |ms: f64| jax.map_or("-".to_string(), |j| format!("{:.2}x", ms / j));
    println!(
        "{:<22} {:>10.2} {:>9} {:>9} {:>9.2}",
        "onnxruntime (ort)",
        ort_ms,
        "1.00x",
        vs_jax(ort_ms),
        ort_load
    );
    println!(
        "{:<22} {:>10.2} {:>9} {:>9} {:>9.2}",
        "tract",
        tract_ms,
        format!("{:.2}x", tract_ms / ort_ms),
        vs_jax(tract_ms),
        tract_load
    );
    match jax {
        Some(j) => println!(
            "{:<22} {:>10.2} {:>9} {:>9} {:>9}",
            "jax jit (manifest)",
            j,
            format!("{:.2}x", j / ort_ms),
            "1.00x",
            "-"
        ),
        None => println!("jax jit: not recorded in the manifest"),
    }

    // Greedy generation throughput on the retained probe set.
    let probes = pkg.probes().expect("probes");
    let tok = pkg.tokenizer();
    let adapter = pkg.adapter().expect("adapter");
    let queries = probes.queries();
    let mut engines: Vec<Box<dyn Engine>> = vec![
        Box::new(OrtEngine::new(&pkg, &opts).expect("ORT engine")),
        Box::new(TractEngine::new(&pkg).expect("tract engine")),
    ];
    println!();
    println!(
        "greedy generation, {} retained probes ({} images), median of 3 after 1 warm-up",
        queries.len(),
        probes.images.shape()[0]
    );
    println!(
        "{:<22} {:>10} {:>12} {:>12}",
        "engine", "answers/s", "run ms", "vision ms"
    );
    for e in engines.iter_mut() {
        let vision_ms = time_n(3, 1, || {
            generate::encode_images(e.as_mut(), probes.images.view()).expect("features");
        });
        let feats = generate::encode_images(e.as_mut(), probes.images.view()).expect("features");
        let ms = time_n(3, 1, || {
            generate::answer(e.as_mut(), adapter.as_slice(), &tok, feats.view(), &queries)
                .expect("answers");
        });
        println!(
            "{:<22} {:>10.1} {:>12.1} {:>12.1}",
            e.name(),
            queries.len() as f64 / (ms / 1e3),
            ms,
            vision_ms
        );
    }
}
