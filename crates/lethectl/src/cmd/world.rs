//! `lethectl world ...`: list identities, render one image, or write a whole dataset
//! (used by the model tooling in models/ to train on the Rust-rendered world).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use lethe_world::{identities, render_id, Split, IMAGE_SIZE};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum WorldCmd {
    /// List identities with id, name, attributes and facts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Render one image of an identity (or of a stranger, with --stranger).
    Render {
        #[arg(
            long,
            required_unless_present = "stranger",
            conflicts_with = "stranger"
        )]
        identity: Option<u32>,
        /// A stranger's index (someone the model was never taught to name).
        #[arg(long)]
        stranger: Option<u32>,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write images of every identity for seeds A..B as a NumPy .npy file of shape
    /// [identities * (B-A), 64, 64, 3] (uint8), identity-major; with --strangers C..D, of
    /// strangers C..D instead ([(D-C) * (B-A), 64, 64, 3], stranger-major).
    Dataset {
        #[arg(long, value_parser = parse_range)]
        seeds: (u64, u64),
        #[arg(long, value_parser = parse_range)]
        strangers: Option<(u64, u64)>,
        #[arg(long)]
        out: PathBuf,
        /// Allow training-split and held-out seeds in one file.
        #[arg(long)]
        mixed_split: bool,
    },
}

/// Parses `A..B` (B exclusive).
pub fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("bad start in {s:?}"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("bad end in {s:?}"))?;
    if b <= a {
        return Err(format!("empty range {s:?}"));
    }
    Ok((a, b))
}

pub fn run(cmd: WorldCmd) -> Result<ExitCode> {
    match cmd {
        WorldCmd::List { json } => {
            if json {
                let list: Vec<_> = identities()
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "id": i.id, "name": i.name(), "first": i.first, "last": i.last,
                            "attributes": i.attributes, "description": i.attributes.describe(),
                            "facts": {"profession": i.profession, "city": i.city},
                            "fact": i.fact(),
                        })
                    })
                    .collect();
                let cats: serde_json::Map<String, serde_json::Value> =
                    lethe_world::ATTRIBUTE_CATEGORIES
                        .iter()
                        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                        .collect();
                let strangers: Vec<_> = lethe_world::strangers()
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "index": s.index, "attributes": s.attributes,
                            "description": s.attributes.describe(),
                        })
                    })
                    .collect();
                let doc = serde_json::json!({
                    "identities": list,
                    "strangers": strangers,
                    "train_strangers": lethe_world::TRAIN_STRANGERS,
                    "attribute_values": cats,
                    "professions": lethe_world::PROFESSIONS,
                    "cities": lethe_world::CITIES,
                    "spare_first_names": lethe_world::SPARE_FIRST_NAMES,
                    "spare_last_names": lethe_world::SPARE_LAST_NAMES,
                    "image_size": IMAGE_SIZE,
                    "held_out_seed_start": lethe_world::HELD_OUT_SEED_START,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                for i in identities() {
                    println!(
                        "{:>3}  {:<18} {:<58} {} from {}",
                        i.id,
                        i.name(),
                        i.attributes.describe(),
                        i.profession,
                        i.city
                    );
                }
            }
        }
        WorldCmd::Render {
            identity,
            stranger,
            seed,
            out,
        } => {
            let img = match (identity, stranger) {
                (Some(id), _) => render_id(id, seed)?,
                (None, Some(k)) => {
                    let all = lethe_world::strangers();
                    let s = all.get(k as usize).with_context(|| {
                        format!(
                            "unknown stranger {k}: the world has strangers 0..{}",
                            all.len()
                        )
                    })?;
                    lethe_world::render_stranger(s, seed)
                }
                (None, None) => bail!("give --identity or --stranger"),
            };
            img.save(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", out.display());
        }
        WorldCmd::Dataset {
            seeds: (a, b),
            strangers,
            out,
            mixed_split,
        } => {
            if !mixed_split && Split::of(a) != Split::of(b - 1) {
                bail!("seeds {a}..{b} cross the train/held-out boundary; pass --mixed-split if that is intended");
            }
            let all = lethe_world::strangers();
            if let Some((_, d)) = strangers {
                if d as usize > all.len() {
                    bail!("strangers go up to {}, not {d}", all.len());
                }
            }
            let people = match strangers {
                Some((c, d)) => (d - c) as usize,
                None => identities().len(),
            };
            let n = people as u64 * (b - a);
            let header = format!(
                "{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), }}"
            );
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&out)
                    .with_context(|| format!("creating {}", out.display()))?,
            );
            write_npy_header(&mut f, &header)?;
            match strangers {
                Some((c, d)) => {
                    for st in &all[c as usize..d as usize] {
                        for s in a..b {
                            f.write_all(lethe_world::render_stranger(st, s).as_raw())?;
                        }
                    }
                }
                None => {
                    for i in identities() {
                        for s in a..b {
                            f.write_all(lethe_world::render(i, s).as_raw())?;
                        }
                    }
                }
            }
            f.flush()?;
            eprintln!("wrote {n} images to {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_npy_header(w: &mut impl Write, dict: &str) -> Result<()> {
    // NPY v1.0: magic, version, u16 header length, header padded with spaces to 64 bytes.
    let mut h = dict.to_string();
    let total = 10 + h.len() + 1;
    h.push_str(&" ".repeat((64 - total % 64) % 64));
    h.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(h.len() as u16).to_le_bytes())?;
    w.write_all(h.as_bytes())?;
    Ok(())
}
