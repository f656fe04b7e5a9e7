//! OpenLDAP `slapd` from Debian, started as a child process on free loopback
//! ports with a throwaway configuration (the ppolicy overlay loaded, so an
//! administrator can lock an account), the fixture tests/fixtures/ldap.ldif,
//! LDAP (with StartTLS) and LDAPS listeners, and `-d 256` statistics logging
//! so tests can count the binds the directory saw.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::pki::TestPki;
use crate::{wait_for, INSTALL_HINT};

/// The directory's suffix.
pub const SUFFIX: &str = "dc=example,dc=org";
/// The service account.
pub const SERVICE_DN: &str = "cn=authproxy,ou=services,dc=example,dc=org";
/// Its password.
pub const SERVICE_PASSWORD: &str = "service-secret";

/// A running slapd. Dropping it kills the process and removes its files.
pub struct Slapd {
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
    /// `ldap://` port (StartTLS available).
    pub ldap_port: u16,
    /// `ldaps://` port.
    pub ldaps_port: u16,
}

fn find(tool: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(tool);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("`{tool}` is not installed; {INSTALL_HINT}")
}

impl Slapd {
    /// Loads the fixture and starts slapd with TLS from `pki`.
    pub async fn start(pki: &TestPki) -> anyhow::Result<Slapd> {
        let slapd = find("slapd")?;
        let slapadd = find("slapadd")?;
        let dir = tempfile::tempdir()?;
        let cert = pki.issue_server("slapd")?;
        std::fs::create_dir(dir.path().join("db"))?;
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             moduleload ppolicy\n\
             pidfile {d}/slapd.pid\n\
             TLSCACertificateFile {ca}\n\
             TLSCertificateFile {cert}\n\
             TLSCertificateKeyFile {key}\n\
             database mdb\n\
             maxsize 10485760\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"cn=admin,{SUFFIX}\"\n\
             rootpw admin-secret\n\
             directory {d}/db\n\
             overlay ppolicy\n\
             access to attrs=userPassword by self read by anonymous auth by * none\n\
             access to * by * read\n",
            d = dir.path().display(),
            ca = pki.ca_path().display(),
            cert = cert.cert_path.display(),
            key = cert.key_path.display(),
        );
        std::fs::write(dir.path().join("slapd.conf"), conf)?;
        let fixture = crate::package_dir().join("fixtures/ldap.ldif");
        let out = tokio::process::Command::new(&slapadd)
            .arg("-f")
            .arg(dir.path().join("slapd.conf"))
            .arg("-l")
            .arg(&fixture)
            .output()
            .await
            .context("running slapadd")?;
        if !out.status.success() {
            bail!("slapadd failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut slapd_server = Slapd {
            child: None,
            dir,
            ldap_port: crate::free_port()?,
            ldaps_port: crate::free_port()?,
        };
        slapd_server.launch(&slapd).await?;
        Ok(slapd_server)
    }

    async fn launch(&mut self, slapd: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let started_before = started_lines(&self.log_path());
        let child = tokio::process::Command::new(slapd)
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
                self.ldap_port, self.ldaps_port
            ))
            .args(["-d", "256"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting slapd")?;
        let pid = child.id();
        self.child = Some(child);
        let ports = (self.ldap_port, self.ldaps_port);
        let log = self.log_path();
        // Ready when this slapd says it started (its listeners are bound) and
        // both ports answer: a port that answers while our slapd has not
        // started (or has exited) belongs to some other process.
        wait_for(
            Duration::from_secs(10),
            "slapd accepting connections",
            || {
                let log = log.clone();
                async move {
                    if !pid.is_some_and(running) {
                        let text = std::fs::read_to_string(&log).unwrap_or_default();
                        return Err(format!("slapd exited: {}", text.trim()));
                    }
                    if started_lines(&log) <= started_before {
                        return Err("slapd has not said it started".to_owned());
                    }
                    let a = tokio::net::TcpStream::connect(("127.0.0.1", ports.0)).await;
                    let b = tokio::net::TcpStream::connect(("127.0.0.1", ports.1)).await;
                    match (a, b) {
                        (Ok(_), Ok(_)) => Ok(Some(())),
                        (a, b) => Err(format!("ldap: {:?}, ldaps: {:?}", a.err(), b.err())),
                    }
                }
            },
        )
        .await
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    /// Kills slapd (a directory outage).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts slapd again on the same ports and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        let _ = std::fs::remove_file(self.dir.path().join("slapd.pid"));
        self.launch(&find("slapd")?).await
    }

    /// How many BIND operations slapd logged for `dn` (its own statistics).
    pub fn binds_for(&self, dn: &str) -> anyhow::Result<usize> {
        let log = std::fs::read_to_string(self.log_path())?;
        // One line per bind request: `conn=N op=M BIND dn="…" method=128`.
        let needle = format!("BIND dn=\"{dn}\" method=");
        Ok(log.lines().filter(|l| l.contains(&needle)).count())
    }

    /// How many BIND operations for `dn` slapd answered with success
    /// (`RESULT tag=97 err=0` for the same connection and operation).
    pub fn successful_binds_for(&self, dn: &str) -> anyhow::Result<usize> {
        let log = std::fs::read_to_string(self.log_path())?;
        let needle = format!("BIND dn=\"{dn}\" method=");
        let ops: Vec<String> = log
            .lines()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| {
                let at = l.find("conn=")?;
                let rest = &l[at..];
                let end = rest.find(" BIND")?;
                Some(rest[..end].to_owned())
            })
            .collect();
        Ok(ops
            .iter()
            .filter(|op| {
                log.lines()
                    .any(|l| l.contains(&format!("{op} RESULT tag=97 err=0 ")))
            })
            .count())
    }

    /// How many lines of slapd's statistics log contain `needle` (e.g.
    /// `SRCH base=` for searches).
    pub fn log_lines_containing(&self, needle: &str) -> anyhow::Result<usize> {
        let log = std::fs::read_to_string(self.log_path())?;
        Ok(log.lines().filter(|l| l.contains(needle)).count())
    }

    /// Bytes clients sent that slapd has not read yet, over all its
    /// connections (the kernel's receive queues, from /proc/net/tcp). While
    /// slapd is paused this grows with every request sent to it: the witness
    /// that a request reached the directory.
    pub fn unread_bytes(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(state), Some(queues)) =
                    (fields.get(1), fields.get(3), fields.get(4))
                else {
                    continue;
                };
                let port = local
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
                let ours = port.is_some_and(|p| p == self.ldap_port || p == self.ldaps_port);
                // 01: ESTABLISHED; the queues are `tx:rx` in hex.
                if ours && *state == "01" {
                    let rx = queues.split_once(':').map(|(_, rx)| rx).unwrap_or("0");
                    total += u64::from_str_radix(rx, 16).unwrap_or(0);
                }
            }
        }
        Ok(total)
    }

    /// Stops slapd with SIGSTOP: it keeps its sockets, accepts TCP
    /// connections in the kernel, and answers nothing (a hung directory).
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP").await?;
        // A stop takes each thread as it next runs: wait until every thread
        // is stopped, so that nothing sent from now on is answered.
        let pid = self.pid()?;
        wait_for(Duration::from_secs(10), "slapd stopped", || async move {
            if all_threads_stopped(pid).map_err(|e| format!("{e:#}"))? {
                Ok(Some(()))
            } else {
                Err("a thread still runs".to_owned())
            }
        })
        .await
    }

    /// Lets a paused slapd run again (SIGCONT).
    pub async fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT").await
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .context("slapd is not running")
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid()?;
        let status = tokio::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill {signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// Adds entries while slapd runs (`ldapadd` as the directory's admin).
    pub async fn add(&self, ldif: &str) -> anyhow::Result<()> {
        self.change("ldapadd", ldif).await
    }

    /// Changes entries while slapd runs (`ldapmodify` as the directory's
    /// admin: `changetype: modify`, `delete`).
    pub async fn modify(&self, ldif: &str) -> anyhow::Result<()> {
        self.change("ldapmodify", ldif).await
    }

    async fn change(&self, tool: &str, ldif: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        let ldapadd = find(tool)?;
        let mut child = tokio::process::Command::new(ldapadd)
            .args(["-x", "-H"])
            .arg(format!("ldap://127.0.0.1:{}", self.ldap_port))
            .args(["-D", &format!("cn=admin,{SUFFIX}"), "-w", "admin-secret"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {tool}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ldif.as_bytes()).await?;
        }
        let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
            .await
            .with_context(|| format!("{tool} did not finish in 10s"))??;
        if !out.status.success() {
            bail!("{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// A file holding the service account's password.
    pub fn service_password_file(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("bind-password");
        std::fs::write(&path, format!("{SERVICE_PASSWORD}\n"))?;
        Ok(path)
    }
}

/// Whether every live thread of `pid` is stopped, one at least (state `T`
/// or `t` in `/proc/PID/task/TID/stat`; an exited thread, `Z` or `X`, is
/// passed over).
fn all_threads_stopped(pid: u32) -> anyhow::Result<bool> {
    let mut stopped = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .context("no state in a thread's stat")?;
        match state {
            'T' | 't' => stopped += 1,
            'Z' | 'X' => {}
            _ => return Ok(false),
        }
    }
    Ok(stopped > 0)
}

/// How many times the log at `path` says slapd started.
fn started_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches("slapd starting")
        .count()
}

/// Whether process `pid` runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(')')?;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state != "Z")
        })
        .unwrap_or(false)
}
