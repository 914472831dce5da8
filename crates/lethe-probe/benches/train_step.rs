//! `cargo bench -p lethe-probe`: one train step of the bundled package in ONNX Runtime and in
//! tract (median of N after warm-up) next to the JAX jit time recorded in the manifest, with
//! the step's FLOPs and the GFLOP/s achieved against this machine's measured peak; and
//! greedy generation over the retained probe set per engine: the whole decoder per token (no
//! cache), the key/value cache, and the cache checking the expected answers as guesses.
//! Plain `main` (`harness = false`); N from `LETHE_BENCH_N` (default 20).
//!
//! FLOPs are counted from the manifest's configuration (multiply-adds x 2), matmul by matmul,
//! as the step's graph does them. Forward, per position and decoder layer: the q, k, v, o and
//! MLP products with their LoRA (rank r) and the attention over all 44 positions; the
//! projector per image token; the logits per text position. Backward: the frozen weights
//! (decoder linears, tied embedding) need only the gradient of their input, once the
//! forward's products; the LoRA factors and the attention need both operands' gradients,
//! twice theirs; the projector's first layer, whose input is the features, needs only its
//! weight gradient. (Stops 13-21 counted the backward as twice the whole forward, the rule of
//! thumb for training every weight: 2.30 GFLOP, 42% more than the graph does; the sum of the
//! graph's MatMul shapes, from ONNX Runtime's profile, is 1.617 GFLOP, what this count gives.)
//! The peak: a 512 x 512 f32 matmul (ndarray's matrixmultiply kernel, FMA where the CPU has
//! it) on each of the cores ORT is given, all at once, summed (until stop 22 it was one
//! thread's times the cores, which overstates what two busy cores deliver together: on a
//! 2-vCPU EPYC VM, 1.76x one core for a large sgemm), the best of three measurements taken
//! before, between and after the engines' runs (this machine's speed drifts by up to 1.6x
//! over minutes; the best peak gives the most demanding limit).

use lethe_model::generate;
use lethe_model::{Engine, Fixtures, OrtEngine, Package, SessionOptions, TrainState, TrainStep};
use lethe_probe::{TractEngine, TractTrainStep};
use ndarray::Array2;
use std::path::Path;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Milliseconds of each of `n` calls of `f` after `warm` unmeasured ones.
fn samples(n: usize, warm: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warm {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn time_n(n: usize, warm: usize, f: impl FnMut()) -> f64 {
    median(samples(n, warm, f))
}

/// "min / quartiles / max" of samples, for the spread of a timing.
fn spread(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!(
        "min {:.1}, quartiles {:.1} / {:.1} / {:.1}, max {:.1} ms",
        q(0.0),
        q(0.25),
        q(0.5),
        q(0.75),
        q(1.0)
    )
}

fn main() {
    // As the agent and lethectl run it (lethe_model::heap).
    lethe_model::heap::keep_step_buffers();
    let n: usize = std::env::var("LETHE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let pkg = Package::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-vlm"))
        .expect("bundled package");
    let fx = Fixtures::load(&pkg).expect("fixtures");
    let opts = SessionOptions::default();

    // The engines' steps as the update runs them (`new`: split over two cores where the
    // package has train_grad.onnx) and, beside them, the whole train_step.onnx.
    type Step = Box<dyn FnMut(&mut TrainState)>;
    let mut steps: Vec<(&str, Step, f64)> = Vec::new();
    let b = &fx.batch;
    let (lr, w_ce, w_kl) = (fx.lr, fx.w_ce, fx.w_kl);
    let t = Instant::now();
    let mut o = TrainStep::new(&pkg, &opts).expect("ORT train step");
    let name = if o.is_split() {
        "ort, split"
    } else {
        "ort, whole"
    };
    let load = t.elapsed().as_secs_f64();
    let batch = b.clone();
    steps.push((
        name,
        Box::new(move |s| {
            o.run(s, &batch, None, lr, w_ce, w_kl).expect("ORT step");
        }),
        load,
    ));
    let t = Instant::now();
    let mut tr = TractTrainStep::new(&pkg).expect("tract train step");
    let name = if tr.is_split() {
        "tract, split"
    } else {
        "tract, whole"
    };
    let load = t.elapsed().as_secs_f64();
    let batch = b.clone();
    steps.push((
        name,
        Box::new(move |s| {
            tr.run(s, &batch, None, lr, w_ce, w_kl).expect("tract step");
        }),
        load,
    ));
    if steps[0].0 == "ort, split" {
        let t = Instant::now();
        let mut o = TrainStep::whole(&pkg, &opts).expect("ORT whole step");
        let load = t.elapsed().as_secs_f64();
        let batch = b.clone();
        steps.push((
            "ort, whole",
            Box::new(move |s| {
                o.run(s, &batch, None, lr, w_ce, w_kl).expect("ORT step");
            }),
            load,
        ));
    }
    if steps[1].0 == "tract, split" {
        let t = Instant::now();
        let mut tr = TractTrainStep::whole(&pkg).expect("tract whole step");
        let load = t.elapsed().as_secs_f64();
        let batch = b.clone();
        steps.push((
            "tract, whole",
            Box::new(move |s| {
                tr.run(s, &batch, None, lr, w_ce, w_kl).expect("tract step");
            }),
            load,
        ));
    }

    // The agent's step (one session, the halves in turn), without and with a guard of half
    // a batch (what a forget with earlier forgets runs).
    let t = Instant::now();
    if let Ok(serial) = TrainStep::serial(&pkg, &opts) {
        if serial.can_guard() {
            let mut o = serial;
            let load = t.elapsed().as_secs_f64();
            let batch = b.clone();
            steps.push((
                "ort, serial (agent)",
                Box::new(move |s| {
                    o.run(s, &batch, None, lr, w_ce, w_kl).expect("ORT step");
                }),
                load,
            ));
            let t = Instant::now();
            let mut o = TrainStep::serial(&pkg, &opts).expect("ORT serial step");
            let load = t.elapsed().as_secs_f64();
            let (batch, guard) = (b.clone(), b.rows(0, b.tokens.nrows() / 2));
            steps.push((
                "ort, serial, guarded",
                Box::new(move |s| {
                    o.run(s, &batch, Some(&guard), lr, w_ce, w_kl)
                        .expect("ORT step");
                }),
                load,
            ));
        }
    }

    // The peak before, between and after the engines' runs; steps fed back, as an update
    // runs them (the state is not copied inside the timing).
    let mut peak_runs = vec![peak_gflops()];
    let mut timings = Vec::new();
    for (i, (_, f, _)) in steps.iter_mut().enumerate() {
        let mut s = fx.state.clone();
        timings.push(samples(n, 3, || f(&mut s)));
        if i == 1 {
            peak_runs.push(peak_gflops());
        }
    }
    peak_runs.push(peak_gflops());
    let ms: Vec<f64> = timings.iter().map(|t| median(t.clone())).collect();
    let (ort_ms, tract_ms) = (ms[0], ms[1]);
    let jax = fx.jax_jit_step_ms;
    let flop = train_step_flop(&pkg);
    let peak = peak_runs.iter().copied().fold(0.0, f64::max);

    println!(
        "train step of {} (Bt={}, P={}), median of {n} after 3 warm-ups; split: half the batch \
         on each of 2 threads (train_grad.onnx) + Adam in Rust; whole: train_step.onnx (ORT on \
         its {}-thread pool, tract on 1 thread)",
        pkg.manifest().model_id,
        pkg.train_batch(),
        pkg.adapter_len(),
        lethe_model::runtime::ORT_THREADS
    );
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>9}",
        "engine", "step ms", "vs ORT", "vs JAX", "load s"
    );
    let vs_jax = |ms: f64| jax.map_or("-".to_string(), |j| format!("{:.2}x", ms / j));
    for ((name, _, load), m) in steps.iter().zip(&ms) {
        println!(
            "{:<22} {:>10.2} {:>9} {:>9} {:>9.2}",
            name,
            m,
            format!("{:.2}x", m / ort_ms),
            vs_jax(*m),
            load
        );
    }
    println!(
        "train step: {:.3} GFLOP (forward + backward through frozen weights, counted); {} {:.1} GFLOP/s, {} {:.1} GFLOP/s; machine peak {:.1} GFLOP/s (sgemm on {} threads at once, best of {:.1} / {:.1} / {:.1}): ORT at {:.0}% of peak ({:.2}x the FLOP limit), tract {:.0}% ({:.2}x)",
        flop / 1e9,
        steps[0].0,
        flop / ort_ms / 1e6,
        steps[1].0,
        flop / tract_ms / 1e6,
        peak,
        lethe_model::runtime::ORT_THREADS,
        peak_runs[0],
        peak_runs[1],
        peak_runs[2],
        100.0 * flop / ort_ms / 1e6 / peak,
        ort_ms / (flop / peak / 1e6),
        100.0 * flop / tract_ms / 1e6 / peak,
        tract_ms / (flop / peak / 1e6),
    );
    for ((name, _, _), t) in steps.iter().zip(timings) {
        println!("{name} step: {}", spread(t));
    }
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
        "greedy generation, {} retained probes ({} images), median of 3 after 1 warm-up; tokens = answer tokens + eos",
        queries.len(),
        probes.images.shape()[0]
    );
    println!(
        "{:<8} {:<34} {:>10} {:>10} {:>10} {:>8}",
        "engine", "decoding", "answers/s", "tokens/s", "run ms", "speed-up"
    );
    let expected: Vec<Option<&str>> = probes
        .probes
        .iter()
        .map(|p| Some(p.expect.as_str()))
        .collect();
    for e in engines.iter_mut() {
        let feats = generate::encode_images(e.as_mut(), probes.images.view()).expect("features");
        let a = adapter.as_slice();
        let tokens: usize =
            generate::answer_tokens_uncached(e.as_mut(), a, &tok, feats.view(), &queries)
                .expect("answers")
                .iter()
                .map(|t| t.len() + 1)
                .sum();
        let whole = time_n(3, 1, || {
            generate::answer_tokens_uncached(e.as_mut(), a, &tok, feats.view(), &queries)
                .expect("answers");
        });
        let cached = time_n(3, 1, || {
            generate::answer(e.as_mut(), a, &tok, feats.view(), &queries).expect("answers");
        });
        let guided = time_n(3, 1, || {
            generate::answer_guided(e.as_mut(), a, &tok, feats.view(), &queries, &expected)
                .expect("answers");
        });
        for (what, ms) in [
            ("whole decoder per token, no cache", whole),
            ("key/value cache", cached),
            ("cache + expected answers as guesses", guided),
        ] {
            println!(
                "{:<8} {:<34} {:>10.1} {:>10.0} {:>10.1} {:>7.2}x",
                e.name(),
                what,
                queries.len() as f64 / (ms / 1e3),
                tokens as f64 / (ms / 1e3),
                ms,
                whole / ms
            );
        }
    }
}

/// FLOPs of one train step of `pkg` (module docs: how they are counted).
fn train_step_flop(pkg: &Package) -> f64 {
    let m = pkg.manifest();
    let c = &m.config;
    let (d, mlp, r) = (c.dd as f64, c.dec_mlp as f64, c.lora_r as f64);
    let (n_img, t, feat) = (
        m.n_image_tokens as f64,
        m.text_len as f64,
        m.feature_dim as f64,
    );
    let s = n_img + t;
    let lora = |i: f64, o: f64| r * (i + o);
    // multiply-adds per position and layer
    let frozen = 4.0 * d * d + 2.0 * d * mlp;
    let low_rank = 4.0 * lora(d, d) + 2.0 * lora(d, mlp);
    let attention = 2.0 * s * d; // scores and weighted values over s positions
    let logits = t * d * m.vocab.len() as f64;
    let layers = s * c.dec_layers as f64;
    let forward = layers * (frozen + low_rank + attention) + n_img * (feat * d + d * d) + logits;
    let backward = layers * (frozen + 2.0 * (low_rank + attention))
        + n_img * (feat * d + 2.0 * d * d)
        + logits;
    2.0 * (forward + backward) * pkg.train_batch() as f64
}

/// One thread's f32 matmul rate, GFLOP/s (the best of 5 runs of a 512 x 512 product).
fn peak_gflops() -> f64 {
    let threads = lethe_model::runtime::ORT_THREADS;
    let barrier = std::sync::Barrier::new(threads);
    // All the cores at once, as a step uses them (two cores together run slower than twice
    // one: they share the cache and memory, and here a VM's neighbours).
    std::thread::scope(|sc| {
        let runs: Vec<_> = (0..threads)
            .map(|_| sc.spawn(|| one_core_sgemm(&barrier)))
            .collect();
        runs.into_iter().map(|r| r.join().expect("sgemm")).sum()
    })
}

/// GFLOP/s of a 512 x 512 f32 matmul on this thread, best of 5, each run started together
/// with the other threads' at `barrier`.
fn one_core_sgemm(barrier: &std::sync::Barrier) -> f64 {
    let n = 512;
    let a = Array2::<f32>::from_shape_fn((n, n), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.1);
    let b = Array2::<f32>::from_shape_fn((n, n), |(i, j)| ((i + 3 * j) % 11) as f32 * 0.1);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        barrier.wait();
        let t = Instant::now();
        std::hint::black_box(a.dot(&b));
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}
