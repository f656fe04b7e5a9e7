//! kubectl's streaming commands against the real kube-apiserver and the test
//! kubelet (kube's own streaming code), in one run: straight to kube
//! (`direct`, as the admin), through authproxy (`proxy`, cluster `direct` of
//! the proxy, as alice) and through authproxy and an agent tunnel (`tunnel`,
//! cluster `edge`, as alice). The proxy and its agent are the release
//! `authproxy` binary, each its own process
//! ([`authproxy_tests::streaming::AgentProxy`]); kubectl's defaults
//! (WebSocket) throughout.
//!
//! - exec round trip: one `kubectl exec -i ... -- cat`, then
//!   `STREAM_ECHOES` lines (default 1,000) written to its stdin one at a
//!   time, each timed until it comes back on stdout: p50, p99, mean.
//! - `kubectl cp`: `STREAM_CP_MIB` MiB (default 256) into the pod and back;
//!   MB/s each way.
//! - port-forward: `curl` downloads `STREAM_CP_MIB` MiB from a server
//!   behind `kubectl port-forward`; MB/s.
//! - the transfers run `STREAM_ROUNDS` times (default 3), the routes in
//!   alternation; each route's fastest is kept (single runs on a shared
//!   machine move by ±30%), and its CPU per MiB is over all rounds.
//! - `STREAM_PIN=1`: the proxy and the agent on the last core, everything
//!   else on the others (as where the proxy has cores of its own).
//! - head-of-line: while `kubectl cp` streams `STREAM_HOL_MIB` MiB (default
//!   1,024) into a pod through the tunnel, 200 sequential GETs through the
//!   same tunnel (one keep-alive client), alternating with 200 straight to
//!   kube (what the busy machine alone costs): p50, p99, against the same
//!   GETs with the tunnel idle; and the proxy's and the agent's resident
//!   memory, before and at its largest during the copy.
//!
//! Every transfer is checked by size, every echo by content, every GET by
//! its 200.
//!
//! Run: `cargo build --release -p proxy-bin && cargo bench -p
//! authproxy-benches --bench streaming`. Needs the kube binaries with the
//! test kubelet (`scripts/test.sh` builds them; `AUTHPROXY_KUBE_BIN` points
//! at them, and kubectl must be on PATH).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use authproxy_tests::kube::CONTAINER;
use authproxy_tests::output_text;
use authproxy_tests::streaming::{
    incompressible, kube_with_kubelet, port_forward, rss_bytes, AgentProxy, Route,
};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// GETs of the head-of-line measurement.
const HOL_GETS: usize = 200;
/// What they ask for.
const HOL_PATH: &str = "/api/v1/namespaces/default/configmaps?limit=1";
/// A bound for one transfer.
const TRANSFER_BOUND: Duration = Duration::from_secs(900);

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{name}={v:?} is not a positive number")),
        Err(_) => Ok(default),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mb_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// Exec round trips on `route`: sorted durations of `echoes` lines.
async fn exec_round_trips(
    route: &Route,
    pod: &str,
    echoes: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (mut child, mut stdout) =
        route.spawn_reading(&["exec", "-i", pod, "-c", CONTAINER, "--", "cat"], true)?;
    let mut stdin = child.stdin.take().context("kubectl stdin")?;
    let mut line = String::new();
    let mut times = Vec::with_capacity(echoes);
    // The first 50 warm the way up.
    for n in 0..echoes + 50 {
        let sent = format!("echo {n} through {route}\n");
        let started = Instant::now();
        stdin.write_all(sent.as_bytes()).await?;
        stdin.flush().await?;
        line.clear();
        tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
            .await
            .with_context(|| format!("{route}: echo {n} did not come back"))??;
        if line != sent {
            bail!("{route}: sent {sent:?}, got {line:?}");
        }
        if n >= 50 {
            times.push(started.elapsed());
        }
    }
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    if !out.status.success() {
        bail!("{route}: {}", output_text(&out));
    }
    times.sort();
    Ok(times)
}

/// Runs kubectl on `route`, failing with its output unless it succeeds; how
/// long it took.
async fn timed_kubectl(route: &Route, args: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = route.run(args, None, TRANSFER_BOUND).await?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("{route}: kubectl {args:?}: {}", output_text(&out));
    }
    Ok(took)
}

/// A server on loopback whose every answer is `len` bytes of `chunk`
/// repeated. Its port.
async fn download_server(chunk: Bytes, len: usize) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let chunk = chunk.clone();
                    let frames = (0..len.div_ceil(chunk.len())).map(move |i| {
                        let part = chunk.slice(..chunk.len().min(len - i * chunk.len()));
                        Ok::<_, Infallible>(hyper::body::Frame::data(part))
                    });
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    std::future::ready(Ok::<_, Infallible>(http::Response::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(port)
}

/// A download of `len` bytes through `kubectl port-forward` on `route`:
/// how long curl took.
async fn forwarded_download(
    route: &Route,
    pod: &str,
    port: u16,
    len: usize,
) -> anyhow::Result<Duration> {
    let (_forward, local) = port_forward(route, pod, port).await?;
    let started = Instant::now();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}"])
        .arg(format!("http://127.0.0.1:{local}/bytes"))
        .kill_on_drop(true)
        .output()
        .await?;
    let took = started.elapsed();
    let size: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    if !out.status.success() || size != len {
        bail!(
            "{route}: port-forward download of {size} bytes: {}",
            output_text(&out)
        );
    }
    Ok(took)
}

/// CPU time (user and kernel, all threads) process `pid` has used, from
/// `/proc/<pid>/stat` (clock ticks of 10 ms, Linux's `USER_HZ`).
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // the fields after the command name, which is in parentheses
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name")?
        .1
        .split_whitespace()
        .collect();
    let ticks =
        |i: usize| -> anyhow::Result<u64> { Ok(fields.get(i).context("short stat")?.parse()?) };
    // utime and stime are fields 14 and 15, the 12th and 13th after it
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Read and write system calls process `pid` has made (`syscr` + `syscw`
/// of `/proc/<pid>/io`: socket reads and writes count, epoll waits do not).
fn io_calls(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        Ok(io
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/{pid}/io"))?
            .trim()
            .parse()?)
    };
    Ok(field("syscr:")? + field("syscw:")?)
}

/// CPU time the whole machine has spent busy and idle, every core and
/// every process, from the first line of `/proc/stat` (clock ticks of 10 ms).
fn machine_time() -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let tick = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is in user)
    let busy = tick(0) + tick(1) + tick(2) + tick(5) + tick(6) + tick(7);
    let idle = tick(3) + tick(4);
    Ok((
        Duration::from_millis(busy * 10),
        Duration::from_millis(idle * 10),
    ))
}

/// What the proxy and the agent spent while `work` ran, and what the whole
/// machine did meanwhile.
#[derive(Clone, Copy, Default)]
struct Spent {
    cpu: Duration,
    io_calls: u64,
    machine_busy: Duration,
    machine_idle: Duration,
}

impl std::ops::Add for Spent {
    type Output = Spent;
    fn add(self, other: Spent) -> Spent {
        Spent {
            cpu: self.cpu + other.cpu,
            io_calls: self.io_calls + other.io_calls,
            machine_busy: self.machine_busy + other.machine_busy,
            machine_idle: self.machine_idle + other.machine_idle,
        }
    }
}

fn spent(pids: [u32; 2]) -> anyhow::Result<Spent> {
    let (machine_busy, machine_idle) = machine_time()?;
    Ok(Spent {
        cpu: cpu_time(pids[0])? + cpu_time(pids[1])?,
        io_calls: io_calls(pids[0])? + io_calls(pids[1])?,
        machine_busy,
        machine_idle,
    })
}

/// CPU time and read/write system calls of the proxy and the agent together
/// while `work` ran, with its result.
async fn with_cpu<T>(
    pids: [u32; 2],
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Spent)> {
    let before = spent(pids)?;
    let result = work.await?;
    let after = spent(pids)?;
    Ok((
        result,
        Spent {
            cpu: after.cpu.saturating_sub(before.cpu),
            io_calls: after.io_calls.saturating_sub(before.io_calls),
            machine_busy: after.machine_busy.saturating_sub(before.machine_busy),
            machine_idle: after.machine_idle.saturating_sub(before.machine_idle),
        },
    ))
}

fn client(ca_pem: &str) -> anyhow::Result<HttpsClient> {
    let config = authproxy_tests::pki::client_config(ca_pem, &[])?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(config))
        .https_only()
        .enable_all_versions()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// One GET of the head-of-line measurement: where, and as whom.
struct Get {
    url: String,
    headers: Vec<(&'static str, String)>,
}

/// `HOL_GETS` sequential rounds of one GET of each of `targets`: each
/// target's sorted durations.
async fn gets(client: &HttpsClient, targets: &[Get]) -> anyhow::Result<Vec<Vec<Duration>>> {
    let mut times = vec![Vec::with_capacity(HOL_GETS); targets.len()];
    for _ in 0..HOL_GETS {
        for (target, times) in targets.iter().zip(times.iter_mut()) {
            let mut request = Request::get(&target.url);
            for (name, value) in &target.headers {
                request = request.header(*name, value);
            }
            let started = Instant::now();
            let response = client.request(request.body(Empty::new())?).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            times.push(started.elapsed());
            if status != StatusCode::OK {
                bail!(
                    "GET {}: {status} {}",
                    target.url,
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }
    for times in &mut times {
        times.sort();
    }
    Ok(times)
}

/// Writes `mib` MiB that do not compress to `path`.
fn write_file(path: &std::path::Path, mib: usize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let chunk = incompressible(16 << 20);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = mib << 20;
    let mut n = 0u64;
    while left > 0 {
        // each 16 MiB differs from the one before in its first bytes
        let mut piece = chunk[..left.min(chunk.len())].to_vec();
        piece[..8].copy_from_slice(&n.to_le_bytes());
        file.write_all(&piece)?;
        left -= piece.len();
        n += 1;
    }
    file.flush()?;
    Ok(())
}

/// The cores this process may run on (`Cpus_allowed_list` of
/// `/proc/self/status`, as `0-3,6`), in order.
fn allowed_cores() -> anyhow::Result<Vec<u32>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?;
    let mut cores = Vec::new();
    for part in list.trim().split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (u32, u32) = (first.parse()?, last.parse()?);
        cores.extend(first..=last);
    }
    Ok(cores)
}

/// util-linux's `taskset` with `args`, then process `pid`.
fn taskset(args: &[&str], pid: u32) -> anyhow::Result<()> {
    let out = std::process::Command::new("taskset")
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("running taskset")?;
    if !out.status.success() {
        bail!("taskset {args:?} {pid}: {}", output_text(&out));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let echoes = env_number("STREAM_ECHOES", 1000)?;
    let cp_mib = env_number("STREAM_CP_MIB", 256)?;
    let hol_mib = env_number("STREAM_HOL_MIB", 1024)?;
    let rounds = env_number("STREAM_ROUNDS", 3)?.max(1);
    // With STREAM_PIN=1 the proxy and the agent get the last core to
    // themselves and everything else (kube-apiserver, the kubelet, kubectl,
    // curl, this bench) shares the others, as where the proxy runs on cores
    // of its own: the ratios then show what the proxy's path costs in
    // throughput rather than what its CPU takes from the API server's.
    let pin = match std::env::var("STREAM_PIN").ok().as_deref() {
        None | Some("0") => None,
        Some("1") => {
            let mut cores = allowed_cores()?;
            let own = cores.pop().filter(|_| !cores.is_empty());
            let Some(own) = own else {
                bail!("STREAM_PIN=1 needs two cores or more");
            };
            let rest: Vec<String> = cores.iter().map(u32::to_string).collect();
            // This thread's cores are inherited by the runtime's threads,
            // and by every process they start.
            taskset(&["-p", "-c", &rest.join(",")], std::process::id())?;
            Some(own)
        }
        Some(other) => bail!("STREAM_PIN: {other:?} is neither 0 nor 1"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let kube = kube_with_kubelet().await?;
        let proxy = AgentProxy::start(kube, "").await?;
        if let Some(core) = pin {
            for pid in [proxy.proxy_pid()?, proxy.agent_pid(0)?] {
                taskset(&["-a", "-p", "-c", &core.to_string()], pid)?;
            }
        }
        let routes = [
            Route::new("direct", kube.admin_kubeconfig(), &[], false),
            Route::new("proxy", proxy.kubeconfig("direct"), &["--context", "alice"], false),
            Route::new("tunnel", proxy.kubeconfig("edge"), &["--context", "alice"], false),
        ];
        let stamp = std::process::id();
        let mut pods = Vec::new();
        for route in &routes {
            let pod = format!("bench-{stamp}-{route}");
            let dir = kube.running_pod(&pod).await?;
            pods.push((pod, dir));
        }
        let cp_bytes = cp_mib << 20;
        let upload = proxy.dir().join("upload.bin");
        write_file(&upload, cp_mib)?;
        let upload = upload.to_str().context("temp path is not UTF-8")?.to_owned();
        let port = download_server(Bytes::from(incompressible(1 << 20)), cp_bytes).await?;

        let pids = [proxy.proxy_pid()?, proxy.agent_pid(0)?];
        println!("streaming bench: kubectl (WebSocket) to the test kubelet; {echoes} exec echoes, cp and port-forward of {cp_mib} MiB, fastest of {rounds} rounds{}", if pin.is_some() { "; the proxy and the agent on a core of their own" } else { "" });
        println!("(CPU and read/write system calls: what the proxy and the agent together spent per MiB of the three transfers;");
        println!(" machine: what every process on every core spent per MiB meanwhile, and the share of the cores left idle)");
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>12} {:>12} {:>14} {:>14} {:>14} {:>14} {:>6}",
            "route", "echo p50", "echo p99", "echo mean", "cp in MB/s", "cp out MB/s", "forward MB/s", "CPU ms/MiB", "I/O calls/MiB", "machine ms/MiB", "idle"
        );
        // The exec round trips once per route; the transfers in rounds,
        // the routes in alternation within each, so that a busy moment of
        // the shared machine falls on every route alike: each route's
        // fastest round is kept, its CPU summed over all of them.
        let mut echo_rows = Vec::new();
        for (route, (pod, _)) in routes.iter().zip(&pods) {
            let echoes = exec_round_trips(route, pod, echoes).await?;
            let mean = echoes.iter().sum::<Duration>() / echoes.len() as u32;
            echo_rows.push((percentile(&echoes, 0.5), percentile(&echoes, 0.99), mean));
        }
        let mut fastest = vec![[Duration::MAX; 3]; routes.len()];
        let mut spent_by = vec![[Spent::default(); 3]; routes.len()];
        for _ in 0..rounds {
            for (i, (route, (pod, dir))) in routes.iter().zip(&pods).enumerate() {
                let target = format!("{pod}:upload.bin");
                let (up, cpu_up) = with_cpu(pids, timed_kubectl(route, &["cp", "-c", CONTAINER, &upload, &target])).await?;
                let size = std::fs::metadata(dir.join("upload.bin"))?.len();
                if size != cp_bytes as u64 {
                    bail!("{route}: {size} bytes arrived of {cp_bytes}");
                }
                let back = proxy.dir().join(format!("download-{route}.bin"));
                let back_str = back.to_str().context("temp path is not UTF-8")?;
                let (down, cpu_down) = with_cpu(pids, timed_kubectl(route, &["cp", "-c", CONTAINER, &target, back_str])).await?;
                let size = std::fs::metadata(&back)?.len();
                if size != cp_bytes as u64 {
                    bail!("{route}: {size} bytes came back of {cp_bytes}");
                }
                std::fs::remove_file(&back)?;
                std::fs::remove_file(dir.join("upload.bin"))?;
                let (forward, cpu_forward) = with_cpu(pids, forwarded_download(route, pod, port, cp_bytes)).await?;
                for (k, (took, cpu)) in [(up, cpu_up), (down, cpu_down), (forward, cpu_forward)].into_iter().enumerate() {
                    fastest[i][k] = fastest[i][k].min(took);
                    spent_by[i][k] = spent_by[i][k] + cpu;
                }
            }
        }
        let moved = (rounds * cp_mib) as f64;
        let mut rows = Vec::new();
        let mut machine = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let [cpu_up, cpu_down, cpu_forward] = spent_by[i];
            let total = cpu_up + cpu_down + cpu_forward;
            let cpu_per_mib = ms(total.cpu) / (3.0 * moved);
            let calls_per_mib = total.io_calls as f64 / (3.0 * moved);
            let machine_per_mib = ms(total.machine_busy) / (3.0 * moved);
            let idle = 100.0 * total.machine_idle.as_secs_f64()
                / (total.machine_busy + total.machine_idle).as_secs_f64().max(f64::MIN_POSITIVE);
            let (p50, p99, mean) = echo_rows[i];
            let row = (
                p50,
                p99,
                mean,
                mb_per_s(cp_bytes, fastest[i][0]),
                mb_per_s(cp_bytes, fastest[i][1]),
                mb_per_s(cp_bytes, fastest[i][2]),
            );
            println!(
                "{:<8} {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>12.0} {:>12.0} {:>14.0} {:>14.2} {:>14.0} {:>14.2} {:>5.0}%",
                route.name, ms(row.0), ms(row.1), ms(row.2), row.3, row.4, row.5, cpu_per_mib, calls_per_mib, machine_per_mib, idle
            );
            // Each transfer on its own: one bound by the cores spends
            // about as much of the machine per MiB as the others and
            // leaves it as little idle.
            let each: Vec<String> = [("cp in", &cpu_up), ("cp out", &cpu_down), ("forward", &cpu_forward)]
                .iter()
                .map(|(name, spent)| {
                    let total = (spent.machine_busy + spent.machine_idle).as_secs_f64().max(f64::MIN_POSITIVE);
                    format!(
                        "{name} {:.2} ms/MiB ({:.2} proxy + agent), {:.0}% idle",
                        ms(spent.machine_busy) / moved,
                        ms(spent.cpu) / moved,
                        100.0 * spent.machine_idle.as_secs_f64() / total
                    )
                })
                .collect();
            println!("{:<8} machine: {}", "", each.join("; "));
            rows.push(row);
            machine.push(machine_per_mib);
        }
        for (i, name) in [(1, "proxy"), (2, "tunnel")] {
            println!(
                "{name}: echo adds {:.3} ms p50 ({:.3} ms mean) over direct; cp in {:.2}x, cp out {:.2}x, forward {:.2}x direct",
                ms(rows[i].0) - ms(rows[0].0),
                ms(rows[i].2) - ms(rows[0].2),
                rows[i].3 / rows[0].3,
                rows[i].4 / rows[0].4,
                rows[i].5 / rows[0].5,
            );
        }
        // Where the cores are the limit, a route's throughput goes as the
        // inverse of the machine's CPU per MiB.
        for (i, name) in [(1, "proxy"), (2, "tunnel")] {
            println!(
                "{name}: the machine spends {:.2} ms more per MiB than direct; bound by CPU alone that is {:.2}x direct",
                machine[i] - machine[0],
                machine[0] / machine[i].max(f64::MIN_POSITIVE),
            );
        }

        // Head-of-line: short GETs through the tunnel while a large copy
        // streams through it.
        // Through the tunnel, and straight to kube (as the proxy's account
        // impersonating alice, as the proxy would), in alternation: the
        // second shows what the busy machine alone costs a GET.
        let client = client(&format!("{}{}", proxy.ca_pem(), kube.pki().ca_pem()))?;
        let targets = [
            Get {
                url: format!("{}/k8s/clusters/edge{HOL_PATH}", proxy.url()),
                headers: vec![("authorization", "Bearer alice-token".into())],
            },
            Get {
                url: format!("{}{HOL_PATH}", kube.url()),
                headers: vec![
                    ("authorization", format!("Bearer {}", kube.proxy_token())),
                    ("impersonate-user", "alice".into()),
                    ("impersonate-uid", "1001".into()),
                    ("impersonate-group", "devs".into()),
                ],
            },
        ];
        let idle = gets(&client, &targets).await?;
        let big = proxy.dir().join("hol.bin");
        write_file(&big, hol_mib)?;
        let big = big.to_str().context("temp path is not UTF-8")?.to_owned();
        let (pod, dir) = &pods[2];
        let before = [rss_bytes(pids[0])?, rss_bytes(pids[1])?];
        let copying = Arc::new(AtomicBool::new(true));
        let sampler = {
            let copying = copying.clone();
            tokio::spawn(async move {
                let mut largest = [0u64; 2];
                while copying.load(Ordering::Relaxed) {
                    for (largest, pid) in largest.iter_mut().zip(pids) {
                        *largest = (*largest).max(rss_bytes(pid).unwrap_or(0));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                largest
            })
        };
        let copy = routes[2]
            .kubectl(&["cp", "-c", CONTAINER, &big, &format!("{pod}:hol.bin")])?
            .spawn()?;
        let target = dir.join("hol.bin");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0) < (8 << 20) {
            if Instant::now() > deadline {
                bail!("the copy did not start");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let during = gets(&client, &targets).await?;
        let written_after_gets = std::fs::metadata(&target)?.len();
        let out = tokio::time::timeout(TRANSFER_BOUND, copy.wait_with_output()).await??;
        copying.store(false, Ordering::Relaxed);
        let largest = sampler.await?;
        if !out.status.success() {
            bail!("head-of-line copy: {}", output_text(&out));
        }
        let size = std::fs::metadata(&target)?.len();
        if size != (hol_mib << 20) as u64 {
            bail!("head-of-line copy: {size} bytes arrived");
        }
        println!(
            "head-of-line: {HOL_GETS} GETs each way, in alternation, idle and during a {hol_mib} MiB cp through the tunnel (at {} MiB of it when they were done)",
            written_after_gets >> 20,
        );
        for (i, name) in ["through the tunnel", "straight to kube"].iter().enumerate() {
            println!(
                "  {name:<18}: idle p50 {:.2} ms p99 {:.2} ms; during the cp p50 {:.2} ms p99 {:.2} ms",
                ms(percentile(&idle[i], 0.5)),
                ms(percentile(&idle[i], 0.99)),
                ms(percentile(&during[i], 0.5)),
                ms(percentile(&during[i], 0.99)),
            );
        }
        for (name, (before, largest)) in ["proxy", "agent"].iter().zip(before.iter().zip(largest)) {
            println!(
                "{name} RSS: {:.1} MiB before, {:.1} MiB at most during the copy (+{:.1} MiB)",
                *before as f64 / (1 << 20) as f64,
                largest as f64 / (1 << 20) as f64,
                largest.saturating_sub(*before) as f64 / (1 << 20) as f64,
            );
        }
        Ok(())
    })
}
