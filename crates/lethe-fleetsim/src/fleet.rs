//! A simulated fleet: N devices, each a real agent (`lethe_agent::agent::run_with`: its
//! intake, journal, replay protection, signed receipts and MQTT client, with its own key,
//! state folder and broker connection) whose updater is the simulation engine. All run in
//! one process on a runtime the fleet owns; each can be stopped and started again (a device
//! going offline and coming back, its persistent session kept by the broker).
//!
//! Files under the fleet's folder: `<device>/` (key, config, state), `pubs/<device>.pub`
//! (what the operator verifies receipts with), `devices.txt` (one id a line), `trust.json`
//! (the operator keys every device trusts).

use crate::engine::{Outcome, SimEngine, Timing};
use crate::plan::OutcomePlan;
use anyhow::{bail, Context, Result};
use lethe_agent::agent::{run_with, AgentError};
use lethe_agent::config::{Config, Overrides};
use lethe_agent::updater::{LoadUpdater, Updater};
use lethe_proto::{PublicKey, SigningKey, TrustStore};
use std::path::{Path, PathBuf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub devices: usize,
    pub fleet: String,
    /// Every device is in this group.
    pub group: String,
    pub broker: String,
    /// The fleet's folder (created).
    pub dir: PathBuf,
    /// Operator keys the devices trust.
    pub operators: Vec<PublicKey>,
    pub plan: OutcomePlan,
    pub timing: Timing,
}

/// The simulated fleet and the runtime its agents run on.
pub struct SimFleet {
    pub spec: FleetSpec,
    devices: Vec<SimDevice>,
    rt: tokio::runtime::Runtime,
}

struct SimDevice {
    id: String,
    cfg: Config,
    outcome: Outcome,
    running: Option<Running>,
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
}

/// The id of device `i` of `n`: `sim-0007` (at least four digits, all the same width).
pub fn device_id(i: usize, n: usize) -> String {
    let width = n.saturating_sub(1).to_string().len().max(4);
    format!("sim-{i:0width$}")
}

impl SimFleet {
    /// Writes every device's key, configuration and state folder (nothing runs yet).
    pub fn create(spec: FleetSpec) -> Result<SimFleet> {
        if spec.devices == 0 {
            bail!("a fleet needs at least one device");
        }
        crate::limits::raise_open_files(spec.devices as u64 * 4 + 256)?;
        let dir = &spec.dir;
        std::fs::create_dir_all(dir.join("pubs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::create_dir_all(dir.join("no-model"))?;
        let mut trust = TrustStore::new();
        for k in &spec.operators {
            trust
                .add(k, None, None)
                .map_err(|e| anyhow::anyhow!("trusting {}: {e}", k.name()))?;
        }
        let trust_path = dir.join("trust.json");
        std::fs::write(&trust_path, trust.to_json())?;
        let mut devices = Vec::with_capacity(spec.devices);
        let mut list = String::new();
        for i in 0..spec.devices {
            let id = device_id(i, spec.devices);
            let ddir = dir.join(&id);
            std::fs::create_dir_all(&ddir)?;
            let key = SigningKey::generate(&id).map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
            std::fs::write(ddir.join("device.key"), key.to_file_string())?;
            std::fs::write(
                dir.join("pubs").join(format!("{id}.pub")),
                key.public().to_file_string(),
            )?;
            let text = device_toml(&id, &spec, &trust_path, &dir.join("no-model"));
            let cfg = Config::from_toml(&text, &ddir, &Overrides::default())
                .map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
            list.push_str(&id);
            list.push('\n');
            devices.push(SimDevice {
                outcome: spec.plan.outcome(i),
                id,
                cfg,
                running: None,
            });
        }
        std::fs::write(dir.join("devices.txt"), list)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(2048)
            .thread_name("fleetsim")
            .enable_all()
            .build()?;
        Ok(SimFleet { spec, devices, rt })
    }

    /// Device ids, in order.
    pub fn ids(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.id.clone()).collect()
    }

    /// How device `i`'s updates end.
    pub fn outcome(&self, i: usize) -> Outcome {
        self.devices[i].outcome
    }

    /// The folder of the devices' public keys (`<device>.pub`).
    pub fn pubs_dir(&self) -> PathBuf {
        self.spec.dir.join("pubs")
    }

    /// `devices.txt`: one device id a line.
    pub fn devices_file(&self) -> PathBuf {
        self.spec.dir.join("devices.txt")
    }

    /// A device's state folder (journal, store, envelopes).
    pub fn state_dir(&self, i: usize) -> &Path {
        &self.devices[i].cfg.state_dir
    }

    /// Starts every device that is not running.
    pub fn start_all(&mut self) {
        for i in 0..self.devices.len() {
            self.start(i);
        }
    }

    /// Starts device `i` (again): its agent reconnects with its persistent session.
    pub fn start(&mut self, i: usize) {
        let d = &mut self.devices[i];
        if d.running.is_some() {
            return;
        }
        let (stop, rx) = watch::channel(false);
        let (outcome, timing) = (d.outcome, self.spec.timing);
        let load: LoadUpdater = Box::new(move |_cfg: &Config| {
            Ok(Box::new(SimEngine { outcome, timing }) as Box<dyn Updater>)
        });
        let task = self.rt.spawn(run_with(d.cfg.clone(), load, rx));
        d.running = Some(Running { stop, task });
    }

    /// Stops device `i` cleanly (its status goes offline; the broker keeps its session).
    pub fn stop(&mut self, i: usize) -> Result<()> {
        if let Some(r) = self.devices[i].running.take() {
            let _ = r.stop.send(true);
            let id = self.devices[i].id.clone();
            self.rt
                .block_on(r.task)
                .with_context(|| format!("{id}: agent task"))?
                .with_context(|| format!("{id}: agent"))?;
        }
        Ok(())
    }

    /// Whether device `i` runs, or its agent stopped with an error (which is returned).
    pub fn check(&mut self, i: usize) -> Result<bool> {
        let Some(r) = &self.devices[i].running else {
            return Ok(false);
        };
        if !r.task.is_finished() {
            return Ok(true);
        }
        let r = self.devices[i].running.take().expect("checked");
        let id = self.devices[i].id.clone();
        self.rt
            .block_on(r.task)
            .with_context(|| format!("{id}: agent task"))?
            .with_context(|| format!("{id}: agent stopped"))?;
        Ok(false)
    }

    /// Stops every running device, concurrently; the first error is returned.
    pub fn stop_all(&mut self) -> Result<()> {
        let mut tasks = Vec::new();
        for d in &mut self.devices {
            if let Some(r) = d.running.take() {
                let _ = r.stop.send(true);
                tasks.push((d.id.clone(), r.task));
            }
        }
        let mut first = None;
        for (id, t) in tasks {
            let r = match self.rt.block_on(t) {
                Ok(r) => r.map_err(|e| anyhow::anyhow!("{id}: {e}")),
                Err(e) => Err(anyhow::anyhow!("{id}: agent task: {e}")),
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The runtime the agents run on (for waiting on signals in the binary).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

/// A simulated device's configuration: no self-checks, the operator's trust store, an empty
/// model folder (the simulation has no package).
fn device_toml(id: &str, spec: &FleetSpec, trust: &Path, model_dir: &Path) -> String {
    format!(
        r#"device_id = "{id}"
fleet = "{}"
groups = ["{}"]
device_key = "device.key"
trust_store = "{}"
model_dir = "{}"
state_dir = "state"
broker = "{}"
keep_alive_s = 30
selfcheck_at_start = false
selfcheck_interval_s = 0
"#,
        spec.fleet,
        spec.group,
        trust.display(),
        model_dir.display(),
        spec.broker
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_sort_in_fleet_order_whatever_the_fleet_size() {
        assert_eq!(device_id(7, 100), "sim-0007");
        assert_eq!(device_id(7, 20_000), "sim-00007");
        let ids: Vec<String> = (0..1000).map(|i| device_id(i, 1000)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn creating_a_fleet_writes_a_key_a_config_and_a_public_key_per_device() {
        let tmp = tempfile::tempdir().unwrap();
        let op = SigningKey::generate("op").unwrap();
        let fleet = SimFleet::create(FleetSpec {
            devices: 3,
            fleet: "f".into(),
            group: "all".into(),
            broker: "mqtt://127.0.0.1:1".into(),
            dir: tmp.path().to_path_buf(),
            operators: vec![op.public()],
            plan: OutcomePlan::default(),
            timing: Timing {
                steps: 1,
                step: std::time::Duration::ZERO,
            },
        })
        .unwrap();
        assert_eq!(fleet.ids(), ["sim-0000", "sim-0001", "sim-0002"]);
        let listed = std::fs::read_to_string(fleet.devices_file()).unwrap();
        assert_eq!(listed, "sim-0000\nsim-0001\nsim-0002\n");
        for id in fleet.ids() {
            let p = std::fs::read_to_string(fleet.pubs_dir().join(format!("{id}.pub"))).unwrap();
            assert_eq!(PublicKey::from_file_str(&p).unwrap().name(), id);
            let key = std::fs::read_to_string(tmp.path().join(&id).join("device.key")).unwrap();
            assert_eq!(SigningKey::from_file_str(&key).unwrap().name(), id);
        }
    }
}
