//! A network namespace of its own for a test, joined to the root namespace
//! by a veth pair with addresses from 198.18.0.0/15 (RFC 2544, set aside
//! for testing): a process started inside ([`Netns::command`]) reaches the
//! root namespace only through the pair's outer address, and nothing on the
//! root namespace's loopback.
//!
//! Creating one needs `ip netns` (iproute2) and the right to use it (root,
//! or CAP_NET_ADMIN and CAP_SYS_ADMIN). Dropping it removes both.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _};

/// A namespace and its veth pair (see the module docs).
#[derive(Debug)]
pub struct Netns {
    name: String,
    outer_link: String,
    /// The namespace's address (on its end of the pair).
    pub inside: IpAddr,
    /// The root namespace's address on the pair.
    pub outside: IpAddr,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// A new namespace; `Ok(None)` (with a line on stderr saying why) when
    /// this process may not create namespaces.
    pub fn create() -> anyhow::Result<Option<Netns>> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("authproxy-test-{pid}-{n}");
        if let Err(error) = ip(&["netns", "add", &name]) {
            eprintln!("skipped: cannot create a network namespace ({error:#})");
            return Ok(None);
        }
        // A /30 per namespace inside 198.18.0.0/15, picked by pid and count.
        let slot = (pid.wrapping_mul(16).wrapping_add(n)) % (1 << 15);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + slot * 4;
        let outside = Ipv4Addr::from(base + 1);
        let inside = Ipv4Addr::from(base + 2);
        let tag = format!("{:x}", (pid << 4) | (n & 0xf));
        let netns = Netns {
            name,
            outer_link: format!("apo{tag}"),
            inside: inside.into(),
            outside: outside.into(),
        };
        let inner_link = format!("api{tag}");
        let (outer, inner) = (&netns.outer_link, &inner_link);
        ip(&["link", "add", outer, "type", "veth", "peer", "name", inner])?;
        ip(&["link", "set", inner, "netns", &netns.name])?;
        ip(&["addr", "add", &format!("{outside}/30"), "dev", outer])?;
        ip(&["link", "set", outer, "up"])?;
        netns.exec(&["ip", "addr", "add", &format!("{inside}/30"), "dev", inner])?;
        netns.exec(&["ip", "link", "set", inner, "up"])?;
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(Some(netns))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `args` inside the namespace and waits for it to succeed.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of the pair deletes the other.
        let _ = ip(&["link", "del", &self.outer_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
