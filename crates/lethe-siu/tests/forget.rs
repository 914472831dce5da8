//! SIU on the bundled model, end to end: forgetting works and is measured by tract,
//! runs are deterministic, and bad requests are refused with nothing changed.

use lethe_model::image::images_to_input;
use lethe_model::{Adapter, OrtEngine, Package, SessionOptions, TrainStep};
use lethe_siu::metrics::{evaluate, EvalSet};
use lethe_siu::unlearn::language;
use lethe_siu::{forget, Method, Options, Outcome, SiuError};
use lethe_world::{identities, render};
use ndarray::Array4;

fn package() -> Package {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/tiny-vlm");
    Package::open(dir).expect("bundled package opens")
}

fn image(id: usize, seed: u64) -> Array4<f32> {
    images_to_input(&[render(&identities()[id], seed)])
}

fn run(
    pkg: &Package,
    img: &Array4<f32>,
    concept: &str,
    opts: &Options,
) -> Result<Outcome, SiuError> {
    let mut engine = OrtEngine::new(pkg, &SessionOptions::default()).unwrap();
    let mut trainer = TrainStep::new(pkg, &SessionOptions::default()).unwrap();
    let base = pkg.adapter().unwrap();
    let mut step = |s: &mut _, b: &_, lr, wc, wk| trainer.run(s, b, lr, wc, wk);
    forget(
        pkg,
        &mut engine,
        &mut step,
        &base,
        img.view(),
        concept,
        opts,
        &mut |_| {},
    )
}

#[test]
fn siu_forgets_a_concept_from_one_image_and_keeps_the_rest() {
    let pkg = package();
    let id = 3;
    let concept = identities()[id].name();
    let img = image(id, 500_003);
    let out = run(&pkg, &img, &concept, &Options::new(Method::Siu)).unwrap();
    let r = &out.report;
    println!(
        "steps {} ({}), {:.1} ms/step",
        r.steps.len(),
        r.stop_reason,
        r.mean_step_ms
    );
    assert!(r.forgotten, "not forgotten: {}", r.stop_reason);
    assert_ne!(
        out.adapter.sha256_hex(),
        pkg.adapter().unwrap().sha256_hex()
    );

    // Independent measurement with tract on held-out seeds.
    let others: Vec<_> = identities()
        .iter()
        .filter(|o| o.id as usize != id)
        .collect();
    let set = EvalSet {
        concept: concept.clone(),
        train_image: img.clone(),
        concept_images: images_to_input(
            &(0..6)
                .map(|s| render(&identities()[id], 1_000_300 + s))
                .collect::<Vec<_>>(),
        ),
        other_images: images_to_input(
            &others
                .iter()
                .map(|o| render(o, 1_000_400))
                .collect::<Vec<_>>(),
        ),
        other_names: others.iter().map(|o| o.name()).collect(),
        other_descriptions: others.iter().map(|o| o.attributes.describe()).collect(),
    };
    let mut tract = lethe_probe::TractEngine::new(&pkg).unwrap();
    let base = pkg.adapter().unwrap();
    let m = evaluate(
        &mut tract,
        &pkg.tokenizer(),
        &language(&pkg),
        base.as_slice(),
        out.adapter.as_slice(),
        &set,
    )
    .unwrap();
    println!("{m:?}");
    assert_eq!(m.efficacy, 1.0);
    assert!(m.generality >= 0.9, "generality {}", m.generality);
    assert!(
        m.specificity_drop_points <= 8.0,
        "specificity drop {}",
        m.specificity_drop_points
    );
    assert!(m.c_dis > 0.0);
}

#[test]
fn the_same_seed_gives_the_same_adapter() {
    let pkg = package();
    let img = image(7, 500_007);
    let concept = identities()[7].name();
    let mut o = Options::new(Method::Siu);
    o.max_steps = 3;
    o.fixed_steps = true;
    let a: Adapter = run(&pkg, &img, &concept, &o).unwrap().adapter;
    let b: Adapter = run(&pkg, &img, &concept, &o).unwrap().adapter;
    assert_eq!(a.sha256_hex(), b.sha256_hex());
}

#[test]
fn an_image_that_does_not_show_the_concept_is_refused() {
    let pkg = package();
    let err = run(
        &pkg,
        &image(5, 500_005),
        &identities()[3].name(),
        &Options::new(Method::Siu),
    )
    .unwrap_err();
    assert!(matches!(err, SiuError::NotRecognised { .. }), "{err}");
    assert!(err.to_string().contains("does not recognise"), "{err}");
}

#[test]
fn a_name_outside_the_vocabulary_is_refused() {
    let pkg = package();
    let err = run(
        &pkg,
        &image(3, 500_003),
        "zorro unknown",
        &Options::new(Method::Siu),
    )
    .unwrap_err();
    assert!(
        matches!(err, SiuError::UnknownConcept { ref word, .. } if word == "zorro"),
        "{err}"
    );
}

#[test]
fn every_baseline_runs_through_the_same_graph() {
    let pkg = package();
    let img = image(9, 500_009);
    let concept = identities()[9].name();
    for m in [Method::Ga, Method::GaKl, Method::Po] {
        let mut o = Options::new(m);
        o.max_steps = 2;
        o.fixed_steps = true;
        let out = run(&pkg, &img, &concept, &o).unwrap();
        assert_eq!(out.report.steps.len(), 2, "{m:?}");
        assert!(out.report.steps.iter().all(|s| s.loss.is_finite()), "{m:?}");
    }
}
