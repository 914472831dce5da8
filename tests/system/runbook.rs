//! The operator's runbook (docs/runbook.md) runs as written: every `sh` block, in order, in
//! one bash shell with `set -euo pipefail`, against a mosquitto started here, with the built
//! `lethectl` and `lethe-agent` first on the `PATH`. The runbook starts its own two agents
//! (a pilot and the rest of the fleet), forgets on the pilot, rolls out, reverts every
//! device that committed the fleet-wide forget, re-issues it and proves it from the ledger.
//!
//! Besides "every command exits 0", the test reads what the rehearsal left behind: the
//! revert's receipt (through the ledger) names the forget it undid, the re-issued forget
//! committed, and the device ends up with the concept forgotten and nothing undone.

use lethe_system_tests::{arg, bin, lethectl, model_dir, workspace};
use lethe_testkit::Broker;
use std::path::Path;
use std::process::Command;

/// The fenced `sh` blocks of a Markdown text, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an `sh` block is not closed");
    blocks
}

/// Kills the agents the runbook started (their pids in `agents.pid`), even when it failed.
struct Agents<'a>(&'a Path);

impl Drop for Agents<'_> {
    fn drop(&mut self) {
        let pids = std::fs::read_to_string(self.0.join("rehearsal/agents.pid")).unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

#[test]
fn sh_blocks_are_found_in_order_and_other_fences_are_not() {
    let md = "# t\n```sh\necho a\n```\ntext\n```text\nnot run\n```\n```sh\necho b\necho c\n```\n";
    assert_eq!(sh_blocks(md), vec!["echo a\n", "echo b\necho c\n"]);
}

#[test]
fn the_operators_runbook_runs_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    let text = std::fs::read_to_string(workspace().join("docs/runbook.md")).unwrap();
    let blocks = sh_blocks(&text);
    assert!(blocks.len() >= 10, "{} sh blocks", blocks.len());
    for must in [
        "lethectl forget",
        "lethectl bench",
        "lethectl rollout",
        "lethectl revert",
    ] {
        assert!(
            blocks.iter().any(|b| b.contains(must)),
            "the runbook runs no `{must}`"
        );
    }
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = format!("set -euo pipefail\n{}", blocks.join("\n"));
    let bins = bin("lethectl").parent().unwrap().to_path_buf();
    assert_eq!(bin("lethe-agent").parent(), Some(bins.as_path()));
    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _agents = Agents(&work);
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("PATH", path)
        .env("LETHE_BROKER", broker.url())
        .env("LETHE_MODEL", model_dir())
        .output()
        .unwrap();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = |d: &str| {
        std::fs::read_to_string(work.join(format!("rehearsal/{d}/agent.log"))).unwrap_or_default()
    };
    assert!(
        out.status.success(),
        "the runbook failed ({}):\n{said}\n--- cam-01 ---\n{}\n--- cam-02 ---\n{}",
        out.status,
        log("cam-01"),
        log("cam-02")
    );
    eprintln!("{said}");

    // At the end cam-02 runs the re-issued forget: the concept forgotten, nothing undone.
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("rehearsal/status.json")).unwrap())
            .unwrap();
    for d in ["cam-01", "cam-02"] {
        assert_eq!(
            status[d]["forgotten"],
            serde_json::json!(["dmitri dietz"]),
            "{d}: {status}"
        );
        assert_eq!(
            status[d]["forgets_undone"],
            serde_json::json!([]),
            "{d}: {status}"
        );
    }
    // The ledger (verified by the runbook's `audit verify`) holds cam-02's receipt of the
    // revert, and it names the forget it undid.
    let ledger = std::fs::read_to_string(work.join("rehearsal/ledger.jsonl")).unwrap();
    let reverts: Vec<serde_json::Value> = ledger
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["command_id"] == "revert-1")
        .collect();
    assert_eq!(reverts.len(), 1, "{ledger}");
    assert_eq!(reverts[0]["device"], "cam-02");
    assert_eq!(reverts[0]["verdict"], "committed");
    let env = hex::decode(reverts[0]["receipt"].as_str().unwrap()).unwrap();
    let env = lethe_proto::envelope::parse(&env, lethe_proto::envelope::Kind::Receipt).unwrap();
    let receipt: serde_json::Value = serde_json::from_slice(env.payload).unwrap();
    assert_eq!(
        receipt["undone_forgets"],
        serde_json::json!([{"command_id": "forget-fleet-1", "concept": "dmitri dietz"}]),
        "{receipt}"
    );

    // Without --undo-forgets, lethectl refuses to sign a revert the ledger shows undoing a
    // forget: exit 1, nothing written.
    let r = work.join("rehearsal");
    let out = r.join("unconfirmed.cmd");
    let no = lethectl(&[
        "revert",
        "--key",
        arg(&r.join("keys/ops.key")),
        "--group",
        "all",
        "--model-id",
        "lethe-tiny-vlm",
        "--seq",
        "9",
        "--committed",
        "forget-fleet-2",
        "--ledger",
        arg(&r.join("ledger.jsonl")),
        "--device-pubs",
        arg(&r.join("keys")),
        "--devices-out",
        arg(&r.join("unconfirmed.devices")),
        "--out",
        arg(&out),
    ]);
    assert_eq!(no.code, 1, "{no:?}");
    assert!(no.stderr.contains("add --undo-forgets"), "{no:?}");
    assert!(!out.exists() && !r.join("unconfirmed.devices").exists());
}
