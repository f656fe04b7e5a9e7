//! Every kubectl streaming command for real: exec, attach, logs -f, cp and
//! port-forward against kube-apiserver with the test kubelet (kube's own
//! streaming code) behind it, straight to kube, through authproxy, and
//! through authproxy and the agent tunnel (`authproxy agent` dialing the
//! proxy, which has no other way to the cluster), each with kubectl's
//! defaults (WebSocket) and again over SPDY
//! (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`,
//! `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).
//!
//! `exec -it` runs kubectl on a terminal of util-linux `script`.
//!
//! Every outcome is checked by content: bytes, checksums, exit codes, and
//! kube's own messages.

use std::path::PathBuf;

use anyhow::Context as _;
use authproxy_tests::kube::{KubeEnv, CONTAINER, NODE, PROXY_SERVICE_ACCOUNT};
use authproxy_tests::output_text;
use authproxy_tests::streaming::{
    big_data, http_server, kube_with_kubelet, port_forward, read_until_line, sha256_file,
    sha256_hex, AgentProxy, Route, AGENT_ACCOUNT, BIG_BOUND, BOUND,
};
use tokio::io::AsyncWriteExt as _;

/// What a test runs against: its proxy, its tunnel, and the six routes.
struct Routes {
    env: KubeEnv,
    tunnel: AgentProxy,
    all: Vec<Route>,
}

/// This test's proxy and tunnel and the six routes: straight to kube as the
/// admin, through the proxy as alice and through the proxy and the agent
/// tunnel (cluster `edge` of [`AgentProxy`]) as alice, each over WebSocket
/// and over SPDY.
async fn routes() -> anyhow::Result<Routes> {
    let env = KubeEnv::start().await?;
    let tunnel = AgentProxy::start(env.kube, "").await?;
    let mut routes = Vec::new();
    for spdy in [false, true] {
        let protocol = if spdy { "spdy" } else { "websocket" };
        routes.push(Route::new(
            &format!("direct-{protocol}"),
            env.kube.admin_kubeconfig(),
            &[],
            spdy,
        ));
        routes.push(Route::new(
            &format!("proxy-{protocol}"),
            env.kubeconfig(),
            &["--context", "alice"],
            spdy,
        ));
        routes.push(Route::new(
            &format!("tunnel-{protocol}"),
            tunnel.kubeconfig("edge"),
            &["--context", "alice"],
            spdy,
        ));
    }
    Ok(Routes {
        env,
        tunnel,
        all: routes,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_carries_stdin_stdout_stderr_and_the_exit_code() -> anyhow::Result<()> {
    let kube = kube_with_kubelet().await?;
    let routes = routes().await?;
    for route in &routes.all {
        let pod = route.pod("exec");
        let dir = kube.running_pod(&pod).await?;
        let out = route
            .run(
                &[
                    "exec",
                    "-i",
                    &pod,
                    "-c",
                    CONTAINER,
                    "--",
                    "sh",
                    "-c",
                    "cat; pwd; echo to-stderr >&2; exit 7",
                ],
                Some(b"hello from stdin\n"),
                BOUND,
            )
            .await?;
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(7), "{route}: {text}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("hello from stdin\n{}\n", dir.display()),
            "{route}: {text}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("to-stderr\n"),
            "{route}: {text}"
        );
        // kube saw the protocol the route asked for (a WebSocket upgrade is
        // a GET, a SPDY one a POST) and, through the proxy, alice
        let verb = if route.spdy { "create" } else { "get" };
        let events = kube
            .wait_audit(1, |e| {
                e["objectRef"]["name"] == pod.as_str() && e["objectRef"]["subresource"] == "exec"
            })
            .await?;
        for event in &events {
            assert_eq!(event["verb"], verb, "{route}: {event}");
            if route.name.starts_with("proxy") {
                assert_eq!(
                    event["user"]["username"], PROXY_SERVICE_ACCOUNT,
                    "{route}: {event}"
                );
            }
            if route.name.starts_with("tunnel") {
                assert_eq!(event["user"]["username"], AGENT_ACCOUNT, "{route}: {event}");
            }
            if !route.name.starts_with("direct") {
                assert_eq!(
                    event["impersonatedUser"]["username"], "alice",
                    "{route}: {event}"
                );
            }
        }
        // success, without stdin
        let out = route
            .run(
                &[
                    "exec",
                    &pod,
                    "-c",
                    CONTAINER,
                    "--",
                    "sh",
                    "-c",
                    "echo $((6 * 7))",
                ],
                None,
                BOUND,
            )
            .await?;
        assert_eq!(out.status.code(), Some(0), "{route}: {}", output_text(&out));
        assert_eq!(out.stdout, b"42\n", "{route}: {}", output_text(&out));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_sends_input_to_the_container_and_streams_its_output() -> anyhow::Result<()> {
    let kube = kube_with_kubelet().await?;
    let routes = routes().await?;
    for route in &routes.all {
        let pod = route.pod("attach");
        let dir = kube.running_pod(&pod).await?;
        let (mut child, mut stdout) =
            route.spawn_reading(&["attach", "-i", &pod, "-c", CONTAINER], true)?;
        let mut stdin = child.stdin.take().context("kubectl stdin")?;
        // The container's main process echoes its input: it comes back
        // through the attached stream.
        let line = format!("typed into {route}");
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        let mut seen = Vec::new();
        read_until_line(&mut stdout, &line, &mut seen)
            .await
            .with_context(|| format!("{route}"))?;
        // The end of kubectl's input ends the attachment, with success.
        drop(stdin);
        let out = tokio::time::timeout(BOUND, child.wait_with_output())
            .await
            .with_context(|| format!("{route}: kubectl attach did not end"))??;
        assert_eq!(out.status.code(), Some(0), "{route}: {}", output_text(&out));
        assert_eq!(seen, std::slice::from_ref(&line), "{route}");
        // ... and the container's output went to its log as well.
        let log = std::fs::read_to_string(dir.join(format!("{CONTAINER}.log")))?;
        assert_eq!(log, format!("{line}\n"), "{route}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_lines_written_after_it_started() -> anyhow::Result<()> {
    let kube = kube_with_kubelet().await?;
    let routes = routes().await?;
    for route in &routes.all {
        let pod = route.pod("logs");
        let dir = kube.running_pod(&pod).await?;
        let log_path = dir.join(format!("{CONTAINER}.log"));
        let append = |line: &str| -> anyhow::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&log_path)?;
            std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes())?;
            Ok(())
        };
        append("written before")?;
        let (child, mut stdout) =
            route.spawn_reading(&["logs", "-f", &pod, "-c", CONTAINER], false)?;
        let mut seen = Vec::new();
        read_until_line(&mut stdout, "written before", &mut seen)
            .await
            .with_context(|| format!("{route}"))?;
        // kubectl is following now: these lines are new to it.
        for n in 0..3 {
            append(&format!("written after {n}"))?;
            read_until_line(&mut stdout, &format!("written after {n}"), &mut seen)
                .await
                .with_context(|| format!("{route}"))?;
        }
        assert_eq!(
            seen,
            [
                "written before",
                "written after 0",
                "written after 1",
                "written after 2"
            ],
            "{route}"
        );
        drop(child); // killed
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_copies_100_mib_into_the_pod_and_back_intact() -> anyhow::Result<()> {
    let kube = kube_with_kubelet().await?;
    let routes = routes().await?;
    let env = &routes.env;
    let local = env.dir.path().join("upload.bin");
    std::fs::write(&local, big_data())?;
    let want = sha256_hex(big_data());
    for route in &routes.all {
        let pod = route.pod("cp");
        let dir = kube.running_pod(&pod).await?;
        let local_str = local.to_str().context("temp path is not UTF-8")?;
        let out = route
            .run(
                &[
                    "cp",
                    "-c",
                    CONTAINER,
                    local_str,
                    &format!("{pod}:upload.bin"),
                ],
                None,
                BIG_BOUND,
            )
            .await?;
        assert!(out.status.success(), "{route}: {}", output_text(&out));
        assert_eq!(sha256_file(&dir.join("upload.bin"))?, want, "{route}");
        // the pod sees the same bytes
        let out = route
            .run(
                &[
                    "exec",
                    &pod,
                    "-c",
                    CONTAINER,
                    "--",
                    "sha256sum",
                    "upload.bin",
                ],
                None,
                BOUND,
            )
            .await?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{want}  upload.bin\n"),
            "{route}: {}",
            output_text(&out)
        );
        let back = env.dir.path().join(format!("download-{route}.bin"));
        let out = route
            .run(
                &[
                    "cp",
                    "-c",
                    CONTAINER,
                    &format!("{pod}:upload.bin"),
                    back.to_str().context("temp path is not UTF-8")?,
                ],
                None,
                BIG_BOUND,
            )
            .await?;
        assert!(out.status.success(), "{route}: {}", output_text(&out));
        assert_eq!(sha256_file(&back)?, want, "{route}");
        std::fs::remove_file(&back)?;
        std::fs::remove_file(dir.join("upload.bin"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_carries_100_connections_and_a_100_mib_download() -> anyhow::Result<()> {
    let kube = kube_with_kubelet().await?;
    let routes = routes().await?;
    let env = &routes.env;
    let port = http_server().await?;
    let want = sha256_hex(big_data());
    for route in &routes.all {
        let pod = route.pod("forward");
        kube.running_pod(&pod).await?;
        let (child, local) = port_forward(route, &pod, port).await?;
        // 100 requests, each on a connection of its own (100 forwarded streams)
        let urls: Vec<String> = (0..100)
            .map(|n| format!("http://127.0.0.1:{local}/r{n}"))
            .collect();
        let mut curl = tokio::process::Command::new("curl");
        curl.args([
            "-sS",
            "--fail",
            "--max-time",
            "60",
            "-H",
            "Connection: close",
        ])
        .args(&urls)
        .kill_on_drop(true);
        let out = curl.output().await.context("running curl")?;
        let expected: String = (0..100).map(|n| format!("hello /r{n}\n")).collect();
        assert!(out.status.success(), "{route}: {}", output_text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{route}");
        // 100 MiB
        let file = env.dir.path().join(format!("forwarded-{route}.bin"));
        let mut curl = tokio::process::Command::new("curl");
        curl.args(["-sS", "--fail", "--max-time", "300", "-o"])
            .arg(&file)
            .arg(format!("http://127.0.0.1:{local}/big"))
            .kill_on_drop(true);
        let out = curl.output().await.context("running curl")?;
        assert!(out.status.success(), "{route}: {}", output_text(&out));
        assert_eq!(sha256_file(&file)?, want, "{route}");
        std::fs::remove_file(&file)?;
        drop(child); // killed
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_as_impersonated_users_obeys_rbac_with_kubes_own_refusal() -> anyhow::Result<()> {
    let kube = kube_with_kubelet().await?;
    let routes = routes().await?;
    let (env, tunnel) = (&routes.env, &routes.tunnel);
    let pod = "rbac";
    kube.running_pod(pod).await?;
    for spdy in [false, true] {
        let route = |name: &str, kubeconfig: PathBuf, flags: &[&str]| Route {
            name: format!("{name}-{}", if spdy { "spdy" } else { "websocket" }),
            kubeconfig,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            spdy,
        };
        let exec = ["exec", pod, "-c", CONTAINER, "--", "echo", "allowed"];
        for allowed in [
            route(
                "direct-as-alice",
                kube.admin_kubeconfig(),
                &["--as", "alice"],
            ),
            route("proxy-alice", env.kubeconfig(), &["--context", "alice"]),
            route(
                "tunnel-alice",
                tunnel.kubeconfig("edge"),
                &["--context", "alice"],
            ),
        ] {
            let out = allowed.run(&exec, None, BOUND).await?;
            assert_eq!(
                out.status.code(),
                Some(0),
                "{allowed}: {}",
                output_text(&out)
            );
            assert_eq!(out.stdout, b"allowed\n", "{allowed}: {}", output_text(&out));
        }
        let direct = route("direct-as-bob", kube.admin_kubeconfig(), &["--as", "bob"])
            .run(&exec, None, BOUND)
            .await?;
        let proxied = route("proxy-bob", env.kubeconfig(), &["--context", "bob"])
            .run(&exec, None, BOUND)
            .await?;
        let tunneled = route(
            "tunnel-bob",
            tunnel.kubeconfig("edge"),
            &["--context", "bob"],
        )
        .run(&exec, None, BOUND)
        .await?;
        let kube_says = String::from_utf8_lossy(&direct.stderr);
        assert_ne!(direct.status.code(), Some(0), "{}", output_text(&direct));
        assert!(direct.stdout.is_empty(), "{}", output_text(&direct));
        assert!(
            kube_says.contains(&format!("pods \"{pod}\" is forbidden: User \"bob\" cannot"))
                && kube_says.contains("resource \"pods/exec\""),
            "{}",
            output_text(&direct)
        );
        // Through the proxy, and the tunnel, bob meets the same refusal,
        // word for word.
        for out in [&proxied, &tunneled] {
            assert_eq!(
                out.status.code(),
                direct.status.code(),
                "{}",
                output_text(out)
            );
            assert!(out.stdout.is_empty(), "{}", output_text(out));
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                kube_says,
                "spdy={spdy}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal_runs_the_command_on_a_tty() -> anyhow::Result<()> {
    // kubectl asks for a TTY only when its own input is a terminal: util-linux
    // `script` gives it one.
    let kube = kube_with_kubelet().await?;
    let routes = routes().await?;
    for route in &routes.all {
        let pod = route.pod("tty");
        kube.running_pod(&pod).await?;
        let mut script = route.on_a_terminal(
            &[
                "exec",
                "-it",
                &pod,
                "-c",
                CONTAINER,
                "--",
                "sh",
                "-c",
                "tty; read x; echo got:$x; exit 3",
            ],
            "",
        )?;
        let mut child = script.spawn().context("running script")?;
        let mut stdin = child.stdin.take().context("script stdin")?;
        stdin.write_all(b"typed on a terminal\n").await?;
        drop(stdin);
        let out = tokio::time::timeout(BOUND, child.wait_with_output())
            .await
            .with_context(|| format!("{route}: kubectl exec -it did not end"))??;
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        assert_eq!(out.status.code(), Some(3), "{route}: {}", output_text(&out));
        // the command saw a terminal, and the typed line arrived through it
        assert!(text.contains("\n/dev/pts/"), "{route}: {text:?}");
        assert!(
            text.contains("got:typed on a terminal\n"),
            "{route}: {text:?}"
        );
    }
    Ok(())
}

/// alice may act as carol, who may exec in `default`; nobody may act as dave.
const AS_CAROL_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: streaming-alice-may-act-as-carol}
rules:
- apiGroups: [""]
  resources: [users]
  resourceNames: [carol]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: streaming-alice-may-act-as-carol}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: streaming-alice-may-act-as-carol}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: streaming-carol, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: streaming}
subjects:
- {kind: User, name: carol, apiGroup: rbac.authorization.k8s.io}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_as_on_an_agent_cluster_is_decided_by_its_api_server() -> anyhow::Result<()> {
    let kube = kube_with_kubelet().await?;
    let routes = routes().await?;
    kube.apply_rbac(
        AS_CAROL_RBAC,
        &[
            &["impersonate", "users/carol", "--as", "alice"][..],
            &["create", "pods", "--subresource=exec", "--as", "carol"][..],
        ],
    )
    .await?;
    let tunnel = &routes.tunnel;
    let pod = "as-carol";
    kube.running_pod(pod).await?;
    // kubectl's discovery as alice herself, cached as a user's would be: a
    // refused `--as` then fails on the request itself, whose message kubectl
    // prints.
    let warm = Route {
        name: "tunnel-alice".into(),
        kubeconfig: tunnel.kubeconfig("edge"),
        flags: vec!["--context".into(), "alice".into()],
        spdy: false,
    }
    .run(&["get", "pods", pod], None, BOUND)
    .await?;
    assert!(warm.status.success(), "{}", output_text(&warm));

    for spdy in [false, true] {
        let as_user = |user: &str| Route {
            name: format!(
                "tunnel-alice-as-{user}-{}",
                if spdy { "spdy" } else { "websocket" }
            ),
            kubeconfig: tunnel.kubeconfig("edge"),
            flags: ["--context", "alice", "--as", user]
                .map(str::to_owned)
                .to_vec(),
            spdy,
        };
        let carol = as_user("carol");
        // Who kube sees: carol, and who really asked.
        let out = carol
            .run(&["auth", "whoami", "-o", "json"], None, BOUND)
            .await?;
        assert!(out.status.success(), "{carol}: {}", output_text(&out));
        let review: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let user = &review["status"]["userInfo"];
        assert_eq!(user["username"], "carol", "{review}");
        assert!(
            user["extra"]["authproxy.io/original-user"][0]
                .as_str()
                .is_some_and(|original| original.contains("\"username\":\"alice\"")),
            "{review}"
        );
        // exec as carol, through the tunnel
        let marker = format!("as-carol-{}", if spdy { "spdy" } else { "websocket" });
        let out = carol
            .run(
                &["exec", pod, "-c", CONTAINER, "--", "echo", &marker],
                None,
                BOUND,
            )
            .await?;
        assert_eq!(out.status.code(), Some(0), "{carol}: {}", output_text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{marker}\n"),
            "{carol}: {}",
            output_text(&out)
        );
        // dave is refused by kube, in kube's words, for any request.
        let dave = as_user("dave");
        let kube_says = r#"users "dave" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#;
        for args in [
            &["get", "pods", pod][..],
            &["exec", pod, "-c", CONTAINER, "--", "echo", "never"][..],
        ] {
            let out = dave.run(args, None, BOUND).await?;
            assert!(!out.status.success(), "{dave}: {}", output_text(&out));
            assert!(out.stdout.is_empty(), "{dave}: {}", output_text(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(kube_says),
                "{dave} {args:?}: {}",
                output_text(&out)
            );
        }
    }
    // The reviews went through the tunnel: kube saw the agent's account,
    // impersonating alice, ask (carol's allowed answer is reused, dave's
    // refusal asked again each time).
    let events = kube
        .wait_audit(2, |e| {
            e["objectRef"]["resource"] == "selfsubjectaccessreviews"
                && e["verb"] == "create"
                && e["user"]["username"] == AGENT_ACCOUNT
                && e["impersonatedUser"]["username"] == "alice"
        })
        .await?;
    for event in &events {
        assert_eq!(event["responseStatus"]["code"], 201, "{event}");
    }
    // The exec reached the kubelet as carol, by way of the agent.
    let events = kube
        .wait_audit(2, |e| {
            e["objectRef"]["name"] == pod && e["objectRef"]["subresource"] == "exec"
        })
        .await?;
    for event in &events {
        assert_eq!(event["user"]["username"], AGENT_ACCOUNT, "{event}");
        assert_eq!(event["impersonatedUser"]["username"], "carol", "{event}");
    }
    Ok(())
}

/// root (group `admins`) may exec too, so that a session the recording does
/// not select can be told from one it does.
const ROOT_EXEC_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: streaming-recording-root, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: streaming}
subjects:
- {kind: User, name: root, apiGroup: rbac.authorization.k8s.io}
"#;

/// The shared API server with its kubelet, where root may exec too.
async fn kube_with_root_exec() -> anyhow::Result<&'static authproxy_tests::kube::Kube> {
    let kube = kube_with_kubelet().await?;
    kube.apply_rbac(
        ROOT_EXEC_RBAC,
        &[&["create", "pods", "--subresource=exec", "--as", "root"]],
    )
    .await?;
    Ok(kube)
}

/// A temporary folder with an empty `casts` folder in it for recordings
/// (both go when the first is dropped).
fn casts_dir() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let recordings = tempfile::tempdir()?;
    let dir = recordings.path().join("casts");
    std::fs::create_dir(&dir)?;
    Ok((recordings, dir))
}

/// The recordings in `dir` not in `seen`, added to it.
fn new_recordings(
    dir: &std::path::Path,
    seen: &mut std::collections::BTreeSet<PathBuf>,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if seen.insert(path.clone()) {
            found.push(path);
        }
    }
    Ok(found)
}

/// The audit events of the proxy's log at `path`.
fn proxy_audit(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).context("an audit line is not JSON"))
        .collect()
}

/// The recording at `file` once it holds what `done` looks for (its writer
/// finishes a moment after the session closes): its text.
async fn finished_recording(
    file: &std::path::Path,
    done: impl Fn(&proxy_core::observe::sessions::Cast) -> bool,
) -> anyhow::Result<String> {
    authproxy_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the recording written",
        || {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let ready =
                proxy_core::observe::sessions::Cast::parse(&text).is_ok_and(|cast| done(&cast));
            async move {
                if ready {
                    Ok(Some(text))
                } else {
                    Err(text)
                }
            }
        },
    )
    .await
}

/// The proxy's audit event `id` once it is written.
async fn audit_event(audit: &std::path::Path, id: &str) -> anyhow::Result<serde_json::Value> {
    authproxy_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the audit event",
        || {
            let found = proxy_audit(audit)
                .ok()
                .and_then(|events| events.into_iter().find(|e| e["auditID"] == id));
            async move { Ok(found) }
        },
    )
    .await
}

/// `authproxy sessions play --instant FILE`: standard output and error.
async fn play(file: &std::path::Path) -> anyhow::Result<(String, String)> {
    let out = tokio::process::Command::new(authproxy_tests::authproxy_binary()?)
        .args(["sessions", "play", "--instant"])
        .arg(file)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "play: {}", output_text(&out));
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sessions_are_recorded_named_in_the_audit_and_replay_as_seen() -> anyhow::Result<()> {
    let kube = kube_with_root_exec().await?;
    let (recordings, dir) = casts_dir()?;
    let audit = recordings.path().join("../audit-of-recordings.log");
    let audit = std::path::absolute(&audit)?;
    // One proxy: cluster `direct` is reached straight, `edge` through the
    // agent tunnel. Sessions of group devs (alice) are recorded, typing too.
    let proxy = AgentProxy::start(
        kube,
        &format!(
            "sessionRecording: {{dir: {}, groups: [devs], input: true}}\naudit: {{path: {}}}",
            dir.display(),
            audit.display()
        ),
    )
    .await?;
    let mut seen = std::collections::BTreeSet::new();
    for cluster in ["direct", "edge"] {
        for spdy in [false, true] {
            let route = Route::new(
                &format!("{cluster}-{}", if spdy { "spdy" } else { "websocket" }),
                proxy.kubeconfig(cluster),
                &["--context", "alice"],
                spdy,
            );
            let pod = route.pod("recorded");
            let pod_dir = kube.running_pod(&pod).await?;
            let out = route
                .run(
                    &[
                        "exec",
                        "-i",
                        &pod,
                        "-c",
                        CONTAINER,
                        "--",
                        "sh",
                        "-c",
                        "cat; echo done; sleep 0.5; echo to-stderr >&2",
                    ],
                    Some(b"typed line\n"),
                    BOUND,
                )
                .await?;
            assert_eq!(out.status.code(), Some(0), "{route}: {}", output_text(&out));
            let found = new_recordings(&dir, &mut seen)?;
            assert_eq!(found.len(), 1, "{route}: {found:?}");
            let file = &found[0];
            // Named by the audit ID, and named in the request's audit event.
            let id = file
                .file_stem()
                .and_then(|s| s.to_str())
                .context("recording name")?
                .to_owned();
            let event = audit_event(&audit, &id)
                .await
                .with_context(|| format!("{route}: no audit event {id}"))?;
            assert_eq!(
                event["objectRef"]["subresource"], "exec",
                "{route}: {event}"
            );
            assert_eq!(
                event["annotations"]["authproxy.io/session-recording"],
                file.to_str().context("path")?,
                "{route}: {event}"
            );
            // What kubectl printed, played back; what was typed, recorded.
            finished_recording(file, |cast| cast.output().ends_with("to-stderr\n")).await?;
            let (played, markers) = play(file).await?;
            assert_eq!(played, "typed line\ndone\nto-stderr\n", "{route}");
            assert!(markers.is_empty(), "{route}: {markers}");
            let cast = std::fs::read_to_string(file)?;
            assert!(
                cast.lines().any(|l| l.contains(r#""i","typed line\n""#)),
                "{route}: {cast}"
            );
            assert!(cast.starts_with(r#"{"version":2,"#), "{route}: {cast}");
            assert!(
                cast.lines()
                    .next()
                    .is_some_and(|h| h.contains("alice exec default/")),
                "{route}: {cast}"
            );

            // On a terminal: its size, and a resize while the session runs,
            // reach the container and the recording.
            let mut script = route.on_a_terminal(
                &[
                    "exec",
                    "-it",
                    &pod,
                    "-c",
                    CONTAINER,
                    "--",
                    "sh",
                    "-c",
                    "i=0; while [ \"$(stty size)\" = \"0 0\" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; stty size; touch sized; i=0; while [ \"$(stty size)\" != \"40 120\" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; stty size; read x; echo got:$x",
                ],
                // The resize once the container has seen the first size
                // (the container's folder is the pod's, on this machine).
                &format!(
                    "stty cols 111 rows 33; (i=0; while [ ! -e '{sized}' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; stty cols 120 rows 40 </dev/tty) &",
                    sized = pod_dir.join("sized").display()
                ),
            )?;
            let mut child = script.spawn().context("running script")?;
            let mut stdin = child.stdin.take().context("script stdin")?;
            // Typed once the resize is through (the line waits in the terminal).
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            stdin.write_all(b"on a terminal\n").await?;
            let out = tokio::time::timeout(BOUND, child.wait_with_output())
                .await
                .with_context(|| format!("{route}: kubectl exec -it did not end"))??;
            drop(stdin);
            let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
            assert!(text.contains("33 111\n"), "{route}: {text:?}");
            assert!(text.contains("40 120\n"), "{route}: {text:?}");
            assert!(text.contains("got:on a terminal\n"), "{route}: {text:?}");
            let found = new_recordings(&dir, &mut seen)?;
            assert_eq!(found.len(), 1, "{route}: {found:?}");
            let cast = finished_recording(&found[0], |cast| {
                cast.output().contains("got:on a terminal")
            })
            .await?;
            let resizes: Vec<&str> = cast.lines().filter(|l| l.contains(r#","r","#)).collect();
            assert!(
                resizes.first().is_some_and(|r| r.contains("111x33"))
                    && resizes.iter().any(|r| r.contains("120x40")),
                "{route}: {resizes:?}"
            );
            let (played, _) = play(&found[0]).await?;
            let played = played.replace('\r', "");
            assert!(
                played.contains("33 111\n") && played.contains("got:on a terminal\n"),
                "{route}: {played:?}"
            );

            // A session the recording does not select is not recorded.
            let root = Route::new(
                &format!("{cluster}-root"),
                proxy.kubeconfig(cluster),
                &["--context", "root"],
                spdy,
            );
            let out = root
                .run(
                    &["exec", &pod, "-c", CONTAINER, "--", "echo", "unrecorded"],
                    None,
                    BOUND,
                )
                .await?;
            assert_eq!(
                out.stdout,
                b"unrecorded\n",
                "{route}: {}",
                output_text(&out)
            );
            assert_eq!(
                new_recordings(&dir, &mut seen)?,
                Vec::<PathBuf>::new(),
                "{route}"
            );
        }
    }
    // Counted.
    let metrics = proxy.metrics().await?;
    assert!(
        metrics.contains("authproxy_session_recordings_total{result=\"recorded\"} 8"),
        "{metrics}"
    );
    Ok(())
}

/// With `required: true`, a session that must be recorded and cannot be
/// (the folder is gone) is not opened: kubectl is told, through the proxy
/// and through the tunnel; a session the recording does not select goes on,
/// and once the folder is back the session is recorded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_must_be_recorded_and_cannot_be_is_not_opened() -> anyhow::Result<()> {
    let kube = kube_with_root_exec().await?;
    let (_recordings, dir) = casts_dir()?;
    let proxy = AgentProxy::start(
        kube,
        &format!(
            "sessionRecording: {{dir: {}, groups: [devs], required: true}}",
            dir.display()
        ),
    )
    .await?;
    std::fs::remove_dir(&dir)?;
    for cluster in ["direct", "edge"] {
        let route_as = |user: &str| {
            Route::new(
                &format!("{cluster}-required-{user}"),
                proxy.kubeconfig(cluster),
                &["--context", user],
                false,
            )
        };
        let pod = format!("required-{cluster}");
        kube.running_pod(&pod).await?;
        let route = route_as("alice");
        let args = [
            "exec", "-i", &pod, "-c", CONTAINER, "--", "sh", "-c", "echo ran",
        ];
        let out = route.run(&args, Some(b""), BOUND).await?;
        assert_ne!(out.status.code(), Some(0), "{route}: {}", output_text(&out));
        assert!(
            output_text(&out).contains("must be recorded"),
            "{route}: {}",
            output_text(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ran"),
            "{route}"
        );
        // A command through the kubelet's `run` behind nodes/proxy has no
        // stream to record: refused before it is forwarded.
        let run = format!("/api/v1/nodes/{NODE}/proxy/run/default/{pod}/{CONTAINER}?cmd=true");
        let run_args = ["create", "--raw", run.as_str(), "-f", "-"];
        let out = route.run(&run_args, Some(b"{}"), BOUND).await?;
        assert_ne!(out.status.code(), Some(0), "{route}: {}", output_text(&out));
        assert!(
            output_text(&out).contains("must be recorded"),
            "{route}: {}",
            output_text(&out)
        );
        // root is not selected for recording: his session goes on, and his
        // run is forwarded (what kube answers it is kube's affair).
        let route = route_as("root");
        let out = route.run(&args, Some(b""), BOUND).await?;
        assert_eq!(out.status.code(), Some(0), "{route}: {}", output_text(&out));
        let out = route.run(&run_args, Some(b"{}"), BOUND).await?;
        assert!(
            !output_text(&out).contains("must be recorded"),
            "{route}: {}",
            output_text(&out)
        );
    }
    // The folder back: recorded again.
    std::fs::create_dir(&dir)?;
    let route = Route::new(
        "direct-required-again",
        proxy.kubeconfig("direct"),
        &["--context", "alice"],
        false,
    );
    let pod = "required-direct";
    let out = route
        .run(
            &[
                "exec", "-i", pod, "-c", CONTAINER, "--", "sh", "-c", "echo ran",
            ],
            Some(b""),
            BOUND,
        )
        .await?;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let mut seen = std::collections::BTreeSet::new();
    assert_eq!(new_recordings(&dir, &mut seen)?.len(), 1);
    Ok(())
}

/// A disk that fills up in the middle of a recorded session ends the
/// recording, never the session: the command's whole output reaches kubectl,
/// through the proxy and through the tunnel, and the recording is cut back to
/// its last whole line with a marker saying why it ends there, so it still
/// reads; the metrics count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_mid_session_ends_the_recording_never_the_session(
) -> anyhow::Result<()> {
    let kube = kube_with_kubelet().await?;
    let (_recordings, dir) = casts_dir()?;
    // 128 KiB of disk for the recordings; each session prints 575 KiB.
    let proxy = AgentProxy::start_on_small_disk(
        kube,
        &format!(
            "sessionRecording: {{dir: {}, groups: [devs]}}",
            dir.display()
        ),
        &dir,
        128 * 1024,
    )
    .await?;
    let disk = proxy.proxy_path(&dir)?;
    let printed: String = (1..=100_000).map(|n| format!("{n}\n")).collect();
    let mut seen = std::collections::BTreeSet::new();
    for cluster in ["direct", "edge"] {
        let route = Route::new(
            &format!("{cluster}-full-disk"),
            proxy.kubeconfig(cluster),
            &["--context", "alice"],
            false,
        );
        let pod = route.pod("full-disk");
        kube.running_pod(&pod).await?;
        let out = route
            .run(
                &[
                    "exec",
                    &pod,
                    "-c",
                    CONTAINER,
                    "--",
                    "sh",
                    "-c",
                    "seq 1 100000",
                ],
                None,
                BOUND,
            )
            .await?;
        assert_eq!(out.status.code(), Some(0), "{route}: {}", output_text(&out));
        assert!(
            out.stdout == printed.as_bytes(),
            "{route}: {} bytes of output, {} printed",
            out.stdout.len(),
            printed.len()
        );
        let found = new_recordings(&disk, &mut seen)?;
        assert_eq!(found.len(), 1, "{route}: {found:?}");
        let text = finished_recording(&found[0], |cast| {
            cast.events.last().is_some_and(|e| e.kind == "m")
        })
        .await?;
        let cast = proxy_core::observe::sessions::Cast::parse(&text)
            .map_err(|e| anyhow::anyhow!("{route}: {e}"))?;
        let recorded = cast.output();
        assert!(
            !recorded.is_empty()
                && recorded.len() < printed.len()
                && printed.starts_with(&recorded),
            "{route}: {} bytes recorded",
            recorded.len()
        );
        let last = cast.events.last().context("no events")?;
        assert!(
            last.data.contains("recording stopped") && last.data.contains("No space left"),
            "{route}: {last:?}"
        );
        // It plays, and says where it stopped.
        let (played, notes) = play(&found[0]).await?;
        assert_eq!(played, recorded, "{route}");
        assert!(notes.contains("No space left"), "{route}: {notes}");
        // Room for the next route's session.
        std::fs::remove_file(&found[0])?;
    }
    let metrics = proxy.metrics().await?;
    for wanted in [
        "authproxy_session_recordings_total{result=\"recorded\"} 2\n",
        "authproxy_session_recordings_total{result=\"truncated\"} 2\n",
    ] {
        assert!(metrics.contains(wanted), "{wanted}: {metrics}");
    }
    let log = proxy.proxy_log();
    assert!(
        log.contains("the session recording could not be written") && !log.contains("panicked"),
        "{log}"
    );
    Ok(())
}
