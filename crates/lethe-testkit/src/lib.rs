//! Test-only helpers shared by the crates' integration tests and the system tests
//! (`tests/`): a real mosquitto broker started by the test on a random loopback port (plain,
//! or plain + a TLS listener requiring client certificates), a RabbitMQ node with its MQTT
//! plugin ([`rabbitmq`]), either behind [`TestBroker`], a throwaway PKI made with the
//! `openssl` command, hostile image headers, and the agent binary's test configuration and
//! process ([`agent`]).
//!
//! mosquitto is required: a missing broker FAILS with a message saying how to install it
//! (`./x test` does); nothing is skipped silently. Never published; dev-dependency only.

pub mod agent;
pub mod rabbitmq;

pub use agent::{agent_toml, Daemon, FAST};
pub use rabbitmq::RabbitMq;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

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

/// Makes a CA and certificates signed by it in `dir` with the openssl command.
pub fn make_pki(dir: &Path, tag: &str) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
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
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_cn = format!("/CN=lethe-test-ca-{tag}");
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        &ca_cn,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&args);
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let mut args = vec!["req"];
        args.extend(ec);
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={name}");
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(&args);
        std::fs::write(
            dir.join(&ext),
            format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                 extendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    TlsFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        let mut b = Broker {
            port: free_port(),
            tls: None,
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
        let ports = [Some(self.port), self.tls.as_ref().map(|t| t.0)];
        for port in ports.into_iter().flatten() {
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
