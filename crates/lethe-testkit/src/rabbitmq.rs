//! A RabbitMQ broker with its MQTT plugin, owned by the test: Debian's `rabbitmq-server`
//! started as a node of its own (its own name, folders, configuration, AMQP, distribution,
//! MQTT and epmd ports on loopback), never the system service. Its MQTT listener accepts
//! anonymous clients (the `guest` user, loopback only). Startup takes seconds (Erlang):
//! [`RabbitMq::start`] returns once the MQTT port answers.
//!
//! rabbitmq-server is required where a test asks for it: a missing one FAILS with a message
//! saying how to install it (`./x test` does); nothing is skipped silently.

use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The node's start script (Debian's package puts it here; the `/usr/sbin` wrapper would
/// switch to the rabbitmq user and the system node's settings).
pub fn rabbitmq_bin() -> PathBuf {
    let p = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if p.exists() {
        return p;
    }
    panic!(
        "rabbitmq-server is not installed: these tests need Debian's RabbitMQ \
         (apt-get install -y rabbitmq-server); `./x test` installs it"
    );
}

/// A RabbitMQ node owned by the test.
pub struct RabbitMq {
    /// The MQTT listener's port.
    pub port: u16,
    epmd_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RabbitMq {
    /// Starts a node in `dir` (its files under `dir/rabbitmq`) and waits for its MQTT port.
    pub fn start(dir: &Path) -> RabbitMq {
        let dir = dir.join("rabbitmq");
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = RabbitMq {
            port: free_port(),
            epmd_port: free_port(),
            dir,
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let d = &self.dir;
        let (amqp, dist) = (free_port(), free_port());
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\n\
                 mqtt.listeners.tcp.default = 127.0.0.1:{}\n\
                 mqtt.allow_anonymous = true\n\
                 log.console = true\nlog.console.level = warning\nlog.file = false\n",
                self.port
            ),
        )
        .unwrap();
        std::fs::write(d.join("enabled_plugins"), "[rabbitmq_mqtt].\n").unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("rabbitmq.log"))
            .unwrap();
        let node = format!("lethe-test-{}@localhost", self.port);
        let child = Command::new(rabbitmq_bin())
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d.join("plugins-expand"))
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting rabbitmq-server");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "rabbitmq-server exited ({status}) before its MQTT port opened\n{}",
                    self.log()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(180),
                "rabbitmq did not open its MQTT port {} in 180 s\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node's console output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rabbitmq.log")).unwrap_or_default()
    }

    /// Stops the node (SIGTERM, a clean shutdown; SIGKILL after 30 s) and its epmd.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let t0 = Instant::now();
            while matches!(c.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // The node started an epmd of its own on `epmd_port`; nothing else uses that port.
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .output();
    }

    /// Stops the node and starts it again on the same ports and data (durable sessions and
    /// retained messages survive).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
    }
}
