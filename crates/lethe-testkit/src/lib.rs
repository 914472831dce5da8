//! Test-only helpers shared by the crates' integration tests and the system tests
//! (`tests/`): a real mosquitto broker started by the test on a random loopback port (plain,
//! or plain + a TLS listener requiring client certificates), a RabbitMQ node with its MQTT
//! plugin ([`rabbitmq`]), either behind [`TestBroker`], a throwaway PKI made with the
//! `openssl` command, hostile image headers, the agent binary's test configuration and
//! process ([`agent`]), small mounted file systems to fill up or search ([`smallfs`]), and
//! the seed of randomised tests (printed, and replayable with `LETHE_TEST_SEED`).
//!
//! mosquitto is required: a missing broker FAILS with a message saying how to install it
//! (`./x test` does); nothing is skipped silently. Never published; dev-dependency only.

pub mod agent;
pub mod rabbitmq;
pub mod smallfs;

pub use agent::{agent_toml, Daemon, FAST};
pub use rabbitmq::RabbitMq;
pub use smallfs::{find_bytes, SmallFs};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment variable that replays a randomised test with a given seed.
pub const SEED_VAR: &str = "LETHE_TEST_SEED";

/// The seed of the randomised test `test`: `LETHE_TEST_SEED` when set (a decimal u64, to
/// replay a failed run), else a fresh one from the clock and the process id. Printed either
/// way (the test harness shows it with a failure's output).
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={v:?} is not a decimal u64")),
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    eprintln!("{test}: seed {seed} (replay with {SEED_VAR}={seed})");
    seed
}

pub fn mosquitto_bin() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "mosquitto is not installed: these tests need Debian's mosquitto broker \
         (apt-get install -y mosquitto); `./x test` installs it"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker owned by the test.
pub struct Broker {
    pub port: u16,
    /// A second, TLS listener (client certificates required), when started with one.
    pub tls: Option<(u16, TlsFiles)>,
    /// A configuration given whole ([`Broker::start_config`]) and the ports it listens on.
    custom: Option<(String, Vec<u16>)>,
    dir: PathBuf,
    child: Option<Child>,
}

/// PEM files of a test PKI: a CA, the broker's certificate, a client certificate.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Runs the openssl command in `dir`; panics with its stderr if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A certificate authority: its certificate and key (PEM).
#[derive(Clone, Debug)]
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA `{file}.pem` / `{file}.key` in `dir` with common name `cn`.
pub fn make_ca(dir: &Path, file: &str, cn: &str) -> Ca {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (format!("{file}.pem"), format!("{file}.key"));
    let cn = format!("/CN={cn}");
    let mut args = vec!["req", "-x509"];
    args.extend(EC);
    args.extend([
        "-keyout",
        &key,
        "-out",
        &cert,
        "-days",
        "2",
        "-subj",
        &cn,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    Ca {
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

/// Issues `{file}.pem` / `{file}.key` in `dir`, signed by `ca`, with common name `cn`, for
/// `usage` (`serverAuth` or `clientAuth`), valid for 127.0.0.1 and localhost.
pub fn issue_cert(dir: &Path, ca: &Ca, file: &str, cn: &str, usage: &str) -> (PathBuf, PathBuf) {
    let (key, csr, pem, ext) = (
        format!("{file}.key"),
        format!("{file}.csr"),
        format!("{file}.pem"),
        format!("{file}.ext"),
    );
    let subj = format!("/CN={cn}");
    let mut args = vec!["req"];
    args.extend(EC);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage={usage}\n"
        ),
    )
    .unwrap();
    let (ca_cert, ca_key) = (ca.cert.to_str().unwrap(), ca.key.to_str().unwrap());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca_cert,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// Makes a CA and certificates signed by it in `dir` with the openssl command.
pub fn make_pki(dir: &Path, tag: &str) -> TlsFiles {
    let ca = make_ca(dir, "ca", &format!("lethe-test-ca-{tag}"));
    let (server_cert, server_key) = issue_cert(dir, &ca, "server", "server", "serverAuth");
    let (client_cert, client_key) = issue_cert(dir, &ca, "client", "client", "clientAuth");
    TlsFiles {
        ca: ca.cert,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let mut b = Broker {
            port: free_port(),
            tls: None,
            custom: None,
            dir: dir.to_path_buf(),
            child: None,
        };
        b.spawn();
        b
    }

    /// A broker on the configuration `text` (a fleet configuration under test), which
    /// listens on loopback `ports`; `port` is the first of them.
    pub fn start_config(dir: &Path, text: &str, ports: &[u16]) -> Broker {
        let mut b = Broker {
            port: ports[0],
            tls: None,
            custom: Some((text.to_string(), ports.to_vec())),
            dir: dir.to_path_buf(),
            child: None,
        };
        b.spawn();
        b
    }

    /// A broker with a plain listener (the test's operator) and a TLS listener that
    /// requires a client certificate signed by `pki`'s CA.
    pub fn start_tls(dir: &Path, pki: &TlsFiles) -> Broker {
        let mut b = Broker {
            port: free_port(),
            tls: Some((free_port(), pki.clone())),
            custom: None,
            dir: dir.to_path_buf(),
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let mut text = format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\n\
             listener {} 127.0.0.1\n",
            self.port
        );
        if let Some((custom, _)) = &self.custom {
            text = custom.clone();
        }
        if let Some((port, pki)) = &self.tls {
            // Started as root, mosquitto would switch to its own user, which cannot read
            // the test's keys in the test's private temporary folder.
            text.push_str("user root\n");
            text.push_str(&format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate true\n",
                pki.ca.display(),
                pki.server_cert.display(),
                pki.server_key.display()
            ));
        }
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let t0 = Instant::now();
        let mut ports = vec![self.port];
        ports.extend(self.tls.as_ref().map(|t| t.0));
        if let Some((_, p)) = &self.custom {
            ports.clone_from(p);
        }
        for port in ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "mosquitto did not start on {port}\n{}",
                    std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a test needs of a broker, whichever it is: its name and plain loopback port.
pub trait TestBroker {
    /// `mosquitto` or `rabbitmq`.
    fn name(&self) -> &'static str;
    fn port(&self) -> u16;
    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port())
    }
}

impl TestBroker for Broker {
    fn name(&self) -> &'static str {
        "mosquitto"
    }
    fn port(&self) -> u16 {
        self.port
    }
}

impl TestBroker for RabbitMq {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }
    fn port(&self) -> u16 {
        self.port
    }
}

/// A PNG signature and a valid IHDR claiming `w`x`h`, a token IDAT and IEND: no real pixel data.
pub fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    // A tiny IDAT (an empty zlib stream) so that decoders get as far as reporting the size.
    let idat = [
        0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01,
    ];
    for (kind, data) in [
        (&b"IHDR"[..], &ihdr[..]),
        (&b"IDAT"[..], &idat[..]),
        (&b"IEND"[..], &[][..]),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test touches the variable, so nothing races on it.
    #[test]
    fn a_seed_from_the_environment_is_replayed_and_a_fresh_one_differs_by_run() {
        std::env::set_var(SEED_VAR, " 1796079392609057568 ");
        assert_eq!(test_seed("replayed"), 1_796_079_392_609_057_568);
        std::env::set_var(SEED_VAR, "not a number");
        assert!(std::panic::catch_unwind(|| test_seed("bad")).is_err());
        std::env::remove_var(SEED_VAR);
        let a = test_seed("fresh");
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(a, test_seed("fresh again"));
    }
}
