//! Which devices a fleet command concerns and how to check what they sign: a device list
//! file (one id a line, `#` comments), the devices of a group as their retained statuses
//! announce them, and a folder of device public keys (`<device>.pub`, as `lethectl keygen`
//! writes them).

use super::fleet::{client_for, Conn};
use super::fsutil::read_text;
use anyhow::{bail, Context, Result};
use lethe_proto::ident::Ident;
use lethe_proto::PublicKey;
use rumqttc::{Event, Packet, QoS};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

/// Parses a device list: one id a line; blank lines and `#` comments skipped; each id a
/// valid identifier, none twice.
pub fn parse_list(text: &str) -> Result<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let id = line.split('#').next().unwrap_or("").trim();
        if id.is_empty() {
            continue;
        }
        Ident::new("device", id).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))?;
        if !seen.insert(id.to_string()) {
            bail!("line {}: device {id} listed twice", i + 1);
        }
        out.push(id.to_string());
    }
    if out.is_empty() {
        bail!("no device in the list");
    }
    Ok(out)
}

/// Reads a device list file.
pub fn read_list(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_list(&text).with_context(|| path.display().to_string())
}

/// The public key of each of `devices` from `dir/<device>.pub`; every one must exist and be
/// named by its device.
pub fn read_pubs(dir: &Path, devices: &[String]) -> Result<HashMap<String, PublicKey>> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for d in devices {
        let p = dir.join(format!("{d}.pub"));
        if !p.is_file() {
            missing.push(d.as_str());
            continue;
        }
        let k = PublicKey::from_file_str(&read_text(&p)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        if k.name() != d {
            bail!("{} is the key of {:?}, not of {d}", p.display(), k.name());
        }
        out.insert(d.clone(), k);
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).copied().collect();
        bail!(
            "no public key in {} for {} device(s): {}{}",
            dir.display(),
            missing.len(),
            shown.join(", "),
            if missing.len() > 5 { ", ..." } else { "" }
        );
    }
    Ok(out)
}

/// Every public key in `dir` (`*.pub`), by device.
pub fn read_all_pubs(dir: &Path) -> Result<HashMap<String, PublicKey>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "pub") {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    if names.is_empty() {
        bail!("no *.pub file in {}", dir.display());
    }
    read_pubs(dir, &names)
}

/// The devices whose retained status names group `group`, collected for `wait` (sorted).
/// Wildcard subscription: on brokers that give retained messages only to exact topics
/// (RabbitMQ 3.x) this finds nothing and a device list is needed instead.
pub async fn of_group(
    conn: &Conn,
    fleet: &str,
    group: &str,
    wait: Duration,
) -> Result<Vec<String>> {
    let (client, mut el) = client_for(conn, "discover")?;
    let mut found = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => break,
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                client.try_subscribe(format!("lethe/v1/{fleet}/+/status"), QoS::AtLeastOnce)?;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                    continue;
                };
                let member = v["groups"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|x| x == group));
                if let (true, Some(d)) = (member, v["device"].as_str()) {
                    found.insert(d.to_string());
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("broker {conn}: {e}"),
        }
    }
    let _ = client.disconnect().await;
    if found.is_empty() {
        bail!(
            "no retained status of a device in group {group} after {:.1} s (on RabbitMQ, \
             whose wildcard subscriptions get no retained messages, pass --devices FILE)",
            wait.as_secs_f64()
        );
    }
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_list_skips_comments_and_blank_lines() {
        let l = parse_list("# lobby\ncam-01\n\n  cam-02  # spare\n").unwrap();
        assert_eq!(l, ["cam-01", "cam-02"]);
    }

    #[test]
    fn a_device_list_with_a_bad_id_a_repeat_or_nothing_is_refused() {
        assert!(parse_list("cam 01\n").is_err());
        let e = parse_list("a\nb\na\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("twice"), "{e}");
        assert!(parse_list("# none\n").is_err());
    }

    #[test]
    fn public_keys_are_read_per_device_and_a_missing_or_misnamed_one_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let k1 = lethe_proto::SigningKey::generate("cam-01").unwrap();
        std::fs::write(tmp.path().join("cam-01.pub"), k1.public().to_file_string()).unwrap();
        let devs = vec!["cam-01".to_string()];
        assert_eq!(read_pubs(tmp.path(), &devs).unwrap()["cam-01"], k1.public());
        let e = read_pubs(tmp.path(), &["cam-02".to_string()]).unwrap_err();
        assert!(e.to_string().contains("cam-02"), "{e}");
        std::fs::write(tmp.path().join("cam-03.pub"), k1.public().to_file_string()).unwrap();
        assert!(read_pubs(tmp.path(), &["cam-03".to_string()]).is_err());
        assert!(
            read_all_pubs(tmp.path()).is_err(),
            "cam-03.pub holds cam-01's key"
        );
    }
}
