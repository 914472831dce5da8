//! `lethectl demo`: the whole loop on one machine with nothing else running. An in-process
//! MQTT broker (rumqttd) on a free loopback port, an in-process agent (lethe-agent) on the
//! bundled model with its state in a temporary folder, fresh operator and device keys, the
//! model's answers before, a signed forget of one identity pushed over MQTT, progress bars
//! from the agent's events, the verified receipt, and the answers after.
//!
//! The package is used in place: the agent never writes it (its adapter versions live in
//! the agent's state folder), so no copy is needed.

use super::local::LocalDevice;
use anyhow::{Context, Result};
use clap::Args;
use lethe_agent::AgentHandle;
use lethe_model::generate::{answer, encode_images};
use lethe_model::{Adapter, Package, Query};
use lethe_probe::TractEngine;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct DemoArgs {
    /// The model package.
    #[arg(long, default_value = "models/tiny-vlm")]
    pub model: PathBuf,
    /// Identity to forget (index in the world).
    #[arg(long, default_value_t = 3)]
    pub identity: u32,
    /// Another identity, to show it is still recognised.
    #[arg(long, default_value_t = 7)]
    pub other: u32,
    /// Step budget of the update.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
}

/// "who is this ?" on held-out renders of `identity`, with tract.
fn ask(
    pkg: &Package,
    tract: &mut TractEngine,
    adapter: &Adapter,
    identity: u32,
) -> Result<Vec<String>> {
    let imgs = (0..3)
        .map(|k| lethe_world::render_id(identity, 1_000_000 + 1000 * u64::from(identity) + k))
        .collect::<Result<Vec<_>, _>>()?;
    let input = lethe_model::image::images_to_input(&imgs);
    let feats = encode_images(tract, input.view())?;
    let q: Vec<Query> = (0..imgs.len())
        .map(|i| Query::about("who is this ?", i))
        .collect();
    Ok(answer(
        tract,
        adapter.as_slice(),
        &pkg.tokenizer(),
        feats.view(),
        &q,
    )?)
}

fn show(label: &str, name: &str, answers: &[String]) {
    println!(
        "  {label:<7} {name:<16} -> {}",
        answers
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

pub fn run(a: DemoArgs) -> Result<ExitCode> {
    let pkg = Package::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let concept = lethe_world::identity(a.identity)
        .context("no such identity")?
        .name();
    let other = lethe_world::identity(a.other)
        .context("no such identity")?
        .name();

    let mut dev = LocalDevice::new(
        &a.model,
        &pkg.manifest().model_id,
        &format!("[update]\nmax_steps = {}\nallow_mismatch = true\n", a.steps),
    )?;
    println!("== keys: an operator key the device trusts, and the device's own key");
    println!(
        "  operator {}  device {} {}",
        dev.op.id(),
        super::local::DEVICE,
        dev.dev.id()
    );
    println!("== broker: rumqttd in-process on {}", dev.broker);
    let state = dev.cfg.state_dir.clone();

    println!("== the model BEFORE (tract, held-out images never trained on)");
    let mut tract = TractEngine::new(&pkg)?;
    let base = pkg.adapter()?;
    show(
        "before",
        &concept,
        &ask(&pkg, &mut tract, &base, a.identity)?,
    );
    show("before", &other, &ask(&pkg, &mut tract, &base, a.other)?);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let code = rt.block_on(async {
        println!(
            "== agent: starting on the bundled model (state in {})",
            state.display()
        );
        let agent = AgentHandle::spawn(dev.cfg.clone());
        let bytes = dev.forget_command("demo-1", a.identity, 0)?;
        let topic = lethe_agent::mqtt::device_cmd(super::local::FLEET, super::local::DEVICE);
        // Wait for the agent to load the model and subscribe before pushing.
        let v = dev.wait_online().await?;
        println!(
            "  agent online: model {} adapter {} provider {}",
            v["model_id"],
            &v["adapter_hash"].as_str().unwrap_or("")[..12],
            v["execution_provider"]
        );
        println!(
            "== push: forget {concept:?} (one image, signed by the operator, {} bytes) -> {topic}",
            bytes.len()
        );
        let pushed = dev.push("demo-1", bytes, false).await;
        agent.stop().await?;
        let (w, took) = pushed?;
        let r = w.receipt;
        println!(
            "== receipt (signature verified with the device's public key), {:.1} s after the push",
            took.as_secs_f64()
        );
        println!("{}", serde_json::to_string_pretty(&r)?);
        println!("== the model AFTER (adapter {})", &r.model_hash_after[..12]);
        let bytes =
            std::fs::read(state.join(format!("adapters/versions/{}.bin", r.model_hash_after)))?;
        let after = Adapter::from_bytes(&bytes, pkg.adapter_len())?;
        show(
            "after",
            &concept,
            &ask(&pkg, &mut tract, &after, a.identity)?,
        );
        show("after", &other, &ask(&pkg, &mut tract, &after, a.other)?);
        Ok::<_, anyhow::Error>(if r.verdict == lethe_proto::Verdict::Committed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })?;
    Ok(code)
}
