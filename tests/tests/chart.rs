//! The Helm chart (deploy/helm/authproxy) with the real helm and the real
//! kube-apiserver: lint and template for each mode, every rendered mode
//! applied with a server-side dry run and then created in its own namespace,
//! and the chart's RBAC proven enough and no more by running authproxy with
//! the chart's own config files and a token of the chart's service account.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use authproxy::config::FileConfig;
use authproxy_tests::helm::{
    chart_dir, helm, objects as parse_objects, one, template_text, write_mounted_files,
};
use authproxy_tests::kube::{assert_kubectl_acts_as, kube, unique_marker, Expected, Kube};
use authproxy_tests::oidc::{generate_key, OidcProvider};
use authproxy_tests::{output_text, wait_for, TestPki};
use serde_json::{json, Value};

const MODES: [&str; 3] = ["deployment", "sidecar", "kubeApiAuth"];

/// The kinds each mode renders with the default values.
fn kinds(mode: &str) -> Vec<&'static str> {
    let mut kinds = vec!["ServiceAccount", "ConfigMap", "Secret"];
    match mode {
        "deployment" => kinds.extend([
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            // the clients' and the metrics listener's
            "Service",
            "Service",
            "NetworkPolicy",
        ]),
        "sidecar" => kinds.extend(["ClusterRole", "ClusterRoleBinding"]),
        _ => kinds.push("DaemonSet"),
    }
    kinds.sort_unstable();
    kinds
}

/// A values file: the mode, a serving certificate, and `more` merged in.
fn values_file(
    dir: &Path,
    pki: &TestPki,
    mode: &str,
    more: Value,
) -> anyhow::Result<std::path::PathBuf> {
    let cert = pki.issue_server("authproxy")?;
    let mut values = json!({"mode": mode, "tls": {"cert": cert.cert_pem, "key": cert.key_pem}});
    if let (Some(values), Value::Object(more)) = (values.as_object_mut(), more) {
        values.extend(more);
    }
    let path = dir.join(format!("values-{mode}-{}.yaml", unique_marker("v")));
    std::fs::write(&path, serde_json::to_string_pretty(&values)?)?;
    Ok(path)
}

/// The pod template of the mode's workload (Deployment or DaemonSet).
fn pod_spec(objects: &[Value]) -> anyhow::Result<&Value> {
    let workload = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
        .context("no workload")?;
    Ok(&workload["spec"]["template"]["spec"])
}

/// The hardening every authproxy pod has.
fn assert_hardened(spec: &Value) -> anyhow::Result<()> {
    let pod = &spec["securityContext"];
    ensure!(
        pod["runAsNonRoot"] == true && pod["runAsUser"] == 65532,
        "{pod}"
    );
    ensure!(pod["seccompProfile"]["type"] == "RuntimeDefault", "{pod}");
    let container = spec["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "authproxy"))
        .context("authproxy container")?;
    let sc = &container["securityContext"];
    ensure!(sc["readOnlyRootFilesystem"] == true, "{sc}");
    ensure!(sc["allowPrivilegeEscalation"] == false, "{sc}");
    ensure!(sc["capabilities"]["drop"] == json!(["ALL"]), "{sc}");
    ensure!(
        container["readinessProbe"]["httpGet"]["path"] == "/readyz",
        "{container}"
    );
    ensure!(
        container["livenessProbe"]["httpGet"]["path"] == "/livez",
        "{container}"
    );
    ensure!(
        container["resources"]["requests"]["cpu"].is_string(),
        "{container}"
    );
    // preStop sleep + shutdownTimeout + margin: the drain is never cut short
    ensure!(
        container["lifecycle"]["preStop"]["sleep"]["seconds"] == 5,
        "{container}"
    );
    ensure!(spec["terminationGracePeriodSeconds"] == 40, "{spec}");
    Ok(())
}

/// The config file the chart writes, parsed as authproxy parses it.
fn chart_config(objects: &[Value]) -> anyhow::Result<FileConfig> {
    let text = one(objects, "ConfigMap")?["data"]["authproxy.yaml"]
        .as_str()
        .context("authproxy.yaml")?;
    FileConfig::parse(text)
        .map_err(|(field, message)| anyhow::anyhow!("{field}: {message}\n{text}"))
}

/// The ClusterRole's verbs, and what the config tells the proxy it holds.
fn impersonation_rendered(objects: &[Value]) -> anyhow::Result<(Vec<String>, String)> {
    let role = one(objects, "ClusterRole")?;
    let mut verbs: Vec<String> = role["rules"]
        .as_array()
        .context("rules")?
        .iter()
        .flat_map(|r| r["verbs"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    verbs.sort();
    verbs.dedup();
    let rbac = match chart_config(objects)?.identity_headers.rbac {
        proxy_core::impersonate::ProxyRbac::Legacy => "legacy",
        proxy_core::impersonate::ProxyRbac::Constrained => "constrained",
    };
    Ok((verbs, rbac.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_is_constrained_from_kube_1_36_and_the_proxy_is_told() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let render = |impersonation: &'static str, kube_version: &'static str| {
        let (dir, pki) = (dir.path(), &pki);
        async move {
            let values = values_file(
                dir,
                pki,
                "deployment",
                json!({"rbac": {"impersonation": impersonation}}),
            )?;
            let yaml = template_text(
                "authproxy",
                "ns",
                &values,
                &["--kube-version", kube_version],
            )
            .await?;
            impersonation_rendered(&parse_objects(&yaml)?)
        }
    };
    for (impersonation, kube_version, want) in [
        ("", "1.35.0", "legacy"),
        ("", "1.36.0", "constrained"),
        ("", "1.37.2", "constrained"),
        ("legacy", "1.37.2", "legacy"),
        ("constrained", "1.35.0", "constrained"),
    ] {
        let (verbs, rbac) = render(impersonation, kube_version).await?;
        assert_eq!(rbac, want, "{impersonation:?} on {kube_version}");
        if want == "legacy" {
            assert_eq!(
                verbs,
                ["impersonate"],
                "{impersonation:?} on {kube_version}"
            );
        } else {
            assert!(
                verbs.contains(&"impersonate:user-info".to_owned())
                    && verbs.contains(&"impersonate-on:user-info:list".to_owned())
                    && !verbs.contains(&"impersonate".to_owned()),
                "{verbs:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_and_renders_each_mode_hardened() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    for mode in MODES {
        let values = values_file(dir.path(), &pki, mode, json!({}))?;
        let out = helm(&[
            "lint",
            "--strict",
            &chart,
            "--values",
            &values.to_string_lossy(),
        ])
        .await?;
        ensure!(
            out.status.success(),
            "helm lint {mode}: {}",
            output_text(&out)
        );

        let objects = parse_objects(&template_text("authproxy", "ns", &values, &[]).await?)?;
        let mut rendered: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        rendered.sort_unstable();
        assert_eq!(rendered, kinds(mode), "{mode}");
        let config = chart_config(&objects)?;
        assert_eq!(
            config.shutdown_timeout,
            Some(Duration::from_secs(30)),
            "{mode}"
        );
        if mode == "sidecar" {
            // the server on the pod's loopback, with the pod's own token
            let text = one(&objects, "ConfigMap")?["data"]["authproxy.yaml"].to_string();
            assert!(text.contains("url: https://127.0.0.1:6443"), "{text}");
            assert!(
                text.contains("tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token"),
                "{text}"
            );
        } else {
            assert_hardened(pod_spec(&objects)?).with_context(|| mode.to_owned())?;
        }
        if let Ok(role) = one(&objects, "ClusterRole") {
            // impersonation, nothing else (constrained: impersonate:<mode>
            // and impersonate-on:<mode>:<verb>)
            for rule in role["rules"].as_array().context("rules")? {
                let verbs = rule["verbs"].as_array().context("verbs")?;
                assert!(
                    !verbs.is_empty()
                        && verbs
                            .iter()
                            .all(|v| v.as_str().is_some_and(|v| v.starts_with("impersonate:")
                                || v.starts_with("impersonate-on:"))),
                    "{rule}"
                );
            }
            assert_eq!(
                role["metadata"]["name"], "ns-authproxy",
                "namespaced cluster name"
            );
        }
    }

    // the image tag the chart runs by default is the version cargo builds
    let chart_yaml: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml"))?)?;
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));

    // Deployment: HA shape
    let values = values_file(dir.path(), &pki, "deployment", json!({}))?;
    let objects = parse_objects(
        &template_text(
            "authproxy",
            "ns",
            &values,
            &["--set", "service.type=LoadBalancer"],
        )
        .await?,
    )?;
    let service = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "authproxy")
        .context("the clients' Service")?;
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    // the metrics listener stays in the cluster
    let metrics_service = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "authproxy-metrics")
        .context("the metrics Service")?;
    assert_eq!(metrics_service["spec"]["type"], "ClusterIP");
    assert_eq!(
        service["spec"]["externalTrafficPolicy"], "Local",
        "client IPs reach the audit log"
    );
    assert!(one(&objects, "HorizontalPodAutoscaler")?["spec"]["minReplicas"].as_u64() >= Some(2));
    assert_eq!(
        one(&objects, "PodDisruptionBudget")?["spec"]["maxUnavailable"],
        1
    );
    let spec = pod_spec(&objects)?;
    assert!(spec["affinity"]["podAntiAffinity"].is_object(), "{spec}");
    assert_eq!(
        spec["topologySpreadConstraints"].as_array().map(Vec::len),
        Some(2)
    );

    // kube-api-auth: host network, loopback webhook, control-plane nodes
    let values = values_file(dir.path(), &pki, "kubeApiAuth", json!({}))?;
    let objects = parse_objects(&template_text("authproxy", "ns", &values, &[]).await?)?;
    let spec = pod_spec(&objects)?;
    assert_eq!(spec["hostNetwork"], true);
    let container = &spec["containers"][0];
    assert_eq!(
        container["args"],
        json!([
            "webhook",
            "--config",
            "/etc/authproxy/config/authproxy.yaml",
            "--listen",
            "127.0.0.1:6440"
        ])
    );
    // probes go to the metrics listener, beside the webhook on loopback
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["host"], "127.0.0.1");
        assert_eq!(container[probe]["httpGet"]["port"], 6441);
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTP");
    }
    assert_eq!(
        chart_config(&objects)?
            .metrics
            .as_ref()
            .map(|m| m.listen.to_string()),
        Some("127.0.0.1:6441".to_owned())
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert!(
        !spec.to_string().contains("serviceAccountToken"),
        "the webhook calls no API and gets no token: {spec}"
    );
    let tolerated: Vec<&Value> = spec["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| &t["key"])
        .collect();
    assert!(
        tolerated.contains(&&json!("node-role.kubernetes.io/control-plane")),
        "{tolerated:?}"
    );
    assert!(spec["affinity"]["nodeAffinity"]
        .to_string()
        .contains("node-role.kubernetes.io/control-plane"));

    // LDAP bind password and issued-token keys: Secrets, mounted, in order
    let values = values_file(
        dir.path(),
        &pki,
        "deployment",
        json!({
            "config": {"authentication": {"ldap": {
                "url": "ldaps://ldap.example.com:636",
                "bindDN": "cn=authproxy,dc=example,dc=com",
                "userSearch": {"baseDN": "ou=people,dc=example,dc=com", "filter": "(uid={username})"}}}},
            "ldap": {"bindPassword": "s3cret"},
            "issuedTokens": {"enabled": true, "keys": [
                {"name": "key-2026-11", "pem": "new"}, {"name": "key-2026-05", "pem": "old"}]},
        }),
    )?;
    let objects = parse_objects(&template_text("authproxy", "ns", &values, &[]).await?)?;
    let config = chart_config(&objects)?;
    let issued = config
        .authentication
        .issued_tokens
        .as_ref()
        .context("issuedTokens")?;
    assert_eq!(
        issued.signing_key_files,
        [
            "/etc/authproxy/signing-keys/key-2026-11",
            "/etc/authproxy/signing-keys/key-2026-05"
        ]
        .map(std::path::PathBuf::from),
        "the first key signs"
    );
    // Revocations: kept in the release's namespace, with exactly the RBAC the
    // store needs (the shards by name for reading and writing).
    let revocation = issued
        .revocation
        .as_ref()
        .context("issuedTokens.revocation")?;
    assert_eq!(revocation.namespace.as_deref(), Some("ns"));
    let role = objects
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["name"] == "authproxy-revocations")
        .context("the revocation store's Role")?;
    assert_eq!(role["metadata"]["namespace"], "ns");
    let shards = proxy_core::authn::revocation::store::shard_names();
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch", "create"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": shards, "verbs": ["get", "update"]},
        ])
    );
    let root = tempfile::tempdir()?;
    write_mounted_files(&objects, pod_spec(&objects)?, root.path())?;
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/authproxy/ldap/bind-password"))?,
        "s3cret"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/authproxy/signing-keys/key-2026-05"))?,
        "old"
    );
    let text = one(&objects, "ConfigMap")?["data"]["authproxy.yaml"].to_string();
    assert!(
        text.contains("bindPasswordFile: /etc/authproxy/ldap/bind-password")
            && !text.contains("s3cret"),
        "{text}"
    );

    // optional monitoring objects
    let values = values_file(dir.path(), &pki, "deployment", json!({}))?;
    let objects = parse_objects(
        &template_text(
            "authproxy",
            "ns",
            &values,
            &[
                "--set",
                "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true",
            ],
        )
        .await?,
    )?;
    assert_eq!(
        one(&objects, "ServiceMonitor")?["spec"]["endpoints"][0]["path"],
        "/metrics"
    );
    assert!(
        one(&objects, "PrometheusRule")?["spec"]["groups"][0]["rules"]
            .as_array()
            .is_some_and(|r| r.len() >= 3)
    );

    // bad values: helm refuses them, naming the value
    for (set, wanted) in [
        ("mode=proxy", "mode: \"proxy\" is not one of"),
        ("tls.cert=", "tls: set tls.existingSecret"),
        (
            "extraVolumes[0].name=config,extraVolumes[0].emptyDir.medium=Memory",
            "extraVolumes: the name \"config\" is the chart's own volume",
        ),
    ] {
        let values = values_file(dir.path(), &pki, "deployment", json!({}))?;
        let out = helm(&[
            "template",
            "x",
            &chart,
            "--values",
            &values.to_string_lossy(),
            "--set",
            set,
        ])
        .await?;
        ensure!(
            !out.status.success(),
            "{set} rendered: {}",
            output_text(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(stderr.contains(wanted), "{set}: {stderr}");
    }
    Ok(())
}

/// Runs kubectl as the admin; fails with its output unless it succeeds.
async fn admin_ok(kube: &Kube, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let out = kube.admin_async(args, stdin).await?;
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        output_text(&out)
    );
    Ok(String::from_utf8(out.stdout)?)
}

async fn shared_kube() -> anyhow::Result<&'static Kube> {
    tokio::task::spawn_blocking(|| kube().map_err(|e| format!("{e:#}")))
        .await?
        .map_err(anyhow::Error::msg)
}

/// A fresh namespace, named after `what`.
async fn namespace(kube: &Kube, what: &str) -> anyhow::Result<String> {
    let ns = unique_marker(&format!("chart-{}", what.to_ascii_lowercase()));
    admin_ok(kube, &["create", "namespace", &ns], None).await?;
    Ok(ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_applies_and_is_created_on_the_real_api_server() -> anyhow::Result<()> {
    let kube = shared_kube().await?;
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    for mode in MODES {
        let ns = namespace(kube, mode).await?;
        let values = values_file(dir.path(), &pki, mode, json!({}))?;
        let yaml = template_text("authproxy", &ns, &values, &[]).await?;
        let out = admin_ok(kube, &["apply", "--dry-run=server", "-f", "-"], Some(&yaml)).await?;
        ensure!(out.contains("(server dry run)"), "{mode}: {out}");
        admin_ok(kube, &["create", "-f", "-"], Some(&yaml)).await?;
        for object in parse_objects(&yaml)? {
            let kind = object["kind"].as_str().context("kind")?;
            let name = object["metadata"]["name"].as_str().context("name")?;
            admin_ok(kube, &["get", "-n", &ns, kind, name, "-o", "name"], None)
                .await
                .with_context(|| format!("{mode}: {kind} {name} was not created"))?;
        }
        if mode == "sidecar" {
            // the documented pod, beside the sidecar mode's objects
            let example = std::fs::read_to_string(chart_dir().join("examples/sidecar-pod.yaml"))?;
            admin_ok(
                kube,
                &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
                Some(&example),
            )
            .await?;
            admin_ok(kube, &["create", "-n", &ns, "-f", "-"], Some(&example)).await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_example_runs_the_container_the_chart_runs() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let values = values_file(dir.path(), &pki, "deployment", json!({}))?;
    let objects = parse_objects(&template_text("authproxy", "ns", &values, &[]).await?)?;
    let chart_spec = pod_spec(&objects)?;
    let example: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        chart_dir().join("examples/sidecar-pod.yaml"),
    )?)?;
    let example_spec = &example["spec"];
    let container = |spec: &Value| -> anyhow::Result<Value> {
        spec["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "authproxy"))
            .cloned()
            .context("authproxy container")
    };
    assert_eq!(container(example_spec)?, container(chart_spec)?);
    assert_eq!(example_spec["volumes"], chart_spec["volumes"]);
    for key in [
        "securityContext",
        "terminationGracePeriodSeconds",
        "serviceAccountName",
        "automountServiceAccountToken",
    ] {
        assert_eq!(example_spec[key], chart_spec[key], "{key}");
    }
    // The service account may impersonate anyone: its token is mounted in
    // the authproxy container, and in no other container of the pod.
    assert_eq!(example_spec["automountServiceAccountToken"], false);
    let token_volumes: Vec<&Value> = example_spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.to_string().contains("serviceAccountToken"))
        .collect();
    ensure!(token_volumes.len() == 1, "{token_volumes:?}");
    let token_volume = &token_volumes[0]["name"];
    for c in ["containers", "initContainers"]
        .iter()
        .flat_map(|key| example_spec[*key].as_array().into_iter().flatten())
    {
        let mounts_token = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == *token_volume);
        assert_eq!(mounts_token, c["name"] == "authproxy", "{c}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_is_enough_to_impersonate_and_no_more() -> anyhow::Result<()> {
    let kube = shared_kube().await?;
    let ns = namespace(kube, "rbac").await?;
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;

    // an OpenID provider whose tokens carry groups and an extra
    let keys = vec![generate_key(dir.path(), "rsa", "rsa-1").await?];
    let idp = OidcProvider::start(&pki, &keys).await?;
    let token_file = dir.path().join("sa-token");
    let values = values_file(
        dir.path(),
        &pki,
        "deployment",
        json!({"metrics": {"port": authproxy_tests::free_port()?}, "config": {
            "upstream": {"url": kube.url(), "caFile": kube.pki().ca_path(), "tokenFile": token_file, "tokenReloadInterval": "50ms"},
            "authentication": {"jwt": [{
                "issuer": {"url": idp.issuer(), "audiences": ["kubernetes"], "certificateAuthority": pki.ca_pem()},
                "claimMappings": {"username": {"claim": "email", "prefix": ""}, "groups": {"claim": "groups", "prefix": "oidc:"},
                                  "uid": {"claim": "sub"}, "extra": [{"key": "example.com/login", "claim": "sub"}]}}]},
            "logging": {"format": "text", "level": "warn"},
        }}),
    )?;
    let yaml = template_text("authproxy", &ns, &values, &[]).await?;
    admin_ok(kube, &["create", "-f", "-"], Some(&yaml)).await?;
    let objects = parse_objects(&yaml)?;
    let sa = one(&objects, "ServiceAccount")?["metadata"]["name"]
        .as_str()
        .context("sa")?
        .to_owned();
    let token = admin_ok(
        kube,
        &["create", "token", &sa, "-n", &ns, "--duration=1h"],
        None,
    )
    .await?;
    std::fs::write(&token_file, token.trim())?;

    // authproxy with the files the chart's pod mounts, and the chart's config
    let root = tempfile::tempdir()?;
    let container = write_mounted_files(&objects, pod_spec(&objects)?, root.path())?;
    assert_eq!(container["args"][2], "/etc/authproxy/config/authproxy.yaml");
    let config_path = root.path().join("etc/authproxy/config/authproxy.yaml");
    let text = std::fs::read_to_string(&config_path)?.replace(
        "/etc/authproxy/",
        &format!("{}/etc/authproxy/", root.path().display()),
    );
    std::fs::write(&config_path, text)?;
    let mut config = FileConfig::load(&config_path)?;
    config.listen = "127.0.0.1:0".parse()?;
    let proxy = authproxy::server::start(&config, &config.base_dir(&config_path)).await?;
    let url = format!("https://{}", proxy.addr());
    wait_for(Duration::from_secs(20), "authproxy ready", || {
        let url = url.clone();
        let ca = pki.ca_path().to_owned();
        async move {
            match authproxy_tests::curl_with_ca(&ca, &[&format!("{url}/readyz")]).await {
                Ok((200, _)) => Ok(Some(())),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await?;

    // an impersonated request with user, uid, groups and an extra works
    let id_token = idp.id_token("kubernetes", "alice").await?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster: {{server: '{url}', certificate-authority: '{}'}}\nusers:\n- name: alice\n  user: {{token: '{id_token}'}}\ncontexts:\n- name: alice\n  context: {{cluster: proxy, user: alice, namespace: default}}\ncurrent-context: alice\n",
            pki.ca_path().display()
        ),
    )?;
    let expected = Expected {
        username: "alice@example.com",
        groups: &["oidc:devs"],
        uid: Some("alice"),
        extra: json!({"example.com/login": ["alice"]}),
    };
    assert_kubectl_acts_as(&kubeconfig, None, &expected).await?;
    let agent = unique_marker("chart-rbac");
    let (code, body) = authproxy_tests::curl_with_ca(
        pki.ca_path(),
        &[
            "-A",
            &agent,
            "-H",
            &format!("Authorization: Bearer {id_token}"),
            &format!("{url}/api/v1/namespaces/default/pods"),
        ],
    )
    .await?;
    ensure!(code == 200, "{code} {body}");
    let sa_user = format!("system:serviceaccount:{ns}:{sa}");
    let event = &kube.wait_audit_by_agent(&agent, 1).await?[0];
    assert_eq!(event["user"]["username"], sa_user.as_str(), "{event}");
    assert_eq!(
        event["impersonatedUser"]["username"], "alice@example.com",
        "{event}"
    );

    // and nothing else: can-i as the chart's service account
    let can = |args: Vec<String>| async move {
        let mut all = vec!["auth".to_owned(), "can-i".to_owned()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = kube.admin_async(&all, None).await?;
        Ok::<String, anyhow::Error>(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let as_sa = format!("--as={sa_user}");
    for (what, want) in [
        ("get secrets -A", "no"),
        ("list secrets -n {ns}", "no"),
        ("list pods -n default", "no"),
        ("create configmaps -n {ns}", "no"),
        ("create tokenreviews.authentication.k8s.io", "no"),
        ("impersonate serviceaccounts", "no"),
        ("* *", "no"),
        // constrained impersonation only: not the legacy verb
        ("impersonate users", "no"),
        ("impersonate groups", "no"),
        ("impersonate-on:user-info:list pods -n default", "yes"),
        ("impersonate-on:user-info:create configmaps -n {ns}", "yes"),
        ("impersonate-on:serviceaccount:list pods -n default", "no"),
    ] {
        let mut args: Vec<String> = what
            .replace("{ns}", &ns)
            .split(' ')
            .map(str::to_owned)
            .collect();
        args.push(as_sa.clone());
        let answer = can(args).await?;
        ensure!(
            answer == want,
            "can-i {what} as {sa_user}: {answer}, want {want}"
        );
    }
    // users, groups, uids and any extra key, in constrained impersonation's
    // group (kubectl's can-i cannot name these: ask kube)
    for (resource, subresource) in [
        ("users", ""),
        ("groups", ""),
        ("uids", ""),
        ("userextras", "example.com/login"),
        ("userextras", "any.example/key"),
    ] {
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": sa_user, "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")],
                     "resourceAttributes": {"verb": "impersonate:user-info", "group": "authentication.k8s.io",
                                            "resource": resource, "subresource": subresource}}});
        let answer: Value = serde_json::from_str(
            &admin_ok(
                kube,
                &["create", "-f", "-", "-o", "json"],
                Some(&review.to_string()),
            )
            .await?,
        )?;
        ensure!(
            answer["status"]["allowed"] == true,
            "impersonate {resource}/{subresource}: {answer}"
        );
    }
    // everything it may do beyond what any service account may is impersonation
    let list = |user: String| {
        let can = &can;
        async move {
            can(vec![
                "--list".into(),
                "-n".into(),
                "default".into(),
                format!("--as={user}"),
            ])
            .await
        }
    };
    let chart_rules = list(sa_user.clone()).await?;
    let baseline = list("system:serviceaccount:authproxy:nobody".into()).await?;
    // A compromised proxy cannot act as system:masters: kube's constrained
    // impersonation refuses it to the chart's account, whatever RBAC says.
    let (code, body) = authproxy_tests::curl_with_ca(
        kube.pki().ca_path(),
        &[
            "-H",
            &format!("Authorization: Bearer {}", token.trim()),
            "-H",
            "Impersonate-User: mallory",
            "-H",
            "Impersonate-Group: system:masters",
            &format!("{}/api/v1/namespaces/default/pods", kube.url()),
        ],
    )
    .await?;
    ensure!(
        code == 403 && body.contains("impersonating the system:masters group is not allowed"),
        "{code} {body}"
    );
    let extra: Vec<&str> = chart_rules
        .lines()
        .filter(|l| !baseline.lines().any(|b| b == *l))
        .collect();
    ensure!(
        !extra.is_empty(),
        "no rules beyond the baseline:\n{chart_rules}"
    );
    for line in &extra {
        if !(line.contains("[impersonate:") || line.contains("[impersonate-on:")) {
            bail!(
                "the chart's service account may do more than impersonate: {line}\n{chart_rules}"
            );
        }
    }
    Ok(())
}

/// The folder and files of deploy/kube-apiserver agree with each other and
/// with the chart: one webhook kubeconfig, in the folder both examples mount,
/// pointing at the DaemonSet's listen address. Returns that address.
fn webhook_examples_address() -> anyhow::Result<String> {
    let dir = chart_dir().join("../../kube-apiserver");
    let read = |name: &str| -> anyhow::Result<Value> {
        Ok(serde_yaml_ng::from_str(&std::fs::read_to_string(
            dir.join(name),
        )?)?)
    };
    let kubeconfig = read("webhook-kubeconfig.yaml")?;
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().context("server")?;
    let address = server
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .context("https server")?
        .to_owned();
    let folder = "/etc/kubernetes/authproxy";
    ensure!(
        cluster["certificate-authority"]
            .as_str()
            .is_some_and(|ca| ca.starts_with(folder)),
        "{cluster}"
    );
    let path = format!("{folder}/webhook-kubeconfig.yaml");
    let rke2 = read("rke2-config.yaml")?;
    let args = rke2["kube-apiserver-arg"].to_string();
    ensure!(
        args.contains(&format!("authentication-token-webhook-config-file={path}")),
        "{args}"
    );
    ensure!(
        args.contains("authentication-token-webhook-version=v1"),
        "{args}"
    );
    ensure!(
        rke2["kube-apiserver-extra-mount"]
            .to_string()
            .contains(&format!("{folder}:{folder}:ro")),
        "{rke2}"
    );
    let kubeadm = read("kubeadm-config.yaml")?;
    let api = &kubeadm["apiServer"];
    ensure!(
        api["extraArgs"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["name"] == "authentication-token-webhook-config-file"
                && a["value"] == path.as_str()),
        "{api}"
    );
    ensure!(
        api["extraVolumes"][0]["mountPath"] == folder
            && api["extraVolumes"][0]["hostPath"] == folder,
        "{api}"
    );
    Ok(address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_auth_mode_authenticates_tokens_for_kube_apiserver() -> anyhow::Result<()> {
    let kube = shared_kube().await?;
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "chart-webhook-token,webhook-user,2001,\"devs\"\n")?;
    // kube-apiserver trusts webhook certificates of its own test CA
    let values = values_file(
        dir.path(),
        kube.pki(),
        "kubeApiAuth",
        json!({
            "kubeApiAuth": {"metricsListen": format!("127.0.0.1:{}", authproxy_tests::free_port()?)},
            "config": {"authentication": {"staticTokens": {"file": tokens}}},
        }),
    )?;
    let objects = parse_objects(&template_text("authproxy", "kube-system", &values, &[]).await?)?;
    let root = tempfile::tempdir()?;
    let container = write_mounted_files(&objects, pod_spec(&objects)?, root.path())?;
    assert_eq!(container["args"][4], webhook_examples_address()?.as_str());
    let config_path = root.path().join("etc/authproxy/config/authproxy.yaml");
    let text = std::fs::read_to_string(&config_path)?.replace(
        "/etc/authproxy/",
        &format!("{}/etc/authproxy/", root.path().display()),
    );
    std::fs::write(&config_path, text)?;
    let config = FileConfig::load(&config_path)?;
    // the shared kube-apiserver's webhook points at this address, not 6440
    let _webhook =
        authproxy::webhook::start(&config, &config.base_dir(&config_path), kube.webhook_addr())
            .await?;

    // kubectl straight at kube-apiserver, with a token only the webhook knows
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube\n  cluster: {{server: '{}', certificate-authority: '{}'}}\nusers:\n- name: u\n  user: {{token: chart-webhook-token}}\ncontexts:\n- name: u\n  context: {{cluster: kube, user: u, namespace: default}}\ncurrent-context: u\n",
            kube.url(),
            kube.pki().ca_path().display()
        ),
    )?;
    let expected = Expected {
        username: "webhook-user",
        groups: &["devs"],
        uid: Some("2001"),
        extra: json!({}),
    };
    assert_kubectl_acts_as(&kubeconfig, None, &expected).await
}

/// Agent mode's values: the proxy to dial, this cluster's name and token.
fn agent_values(dir: &Path, more: Value) -> anyhow::Result<std::path::PathBuf> {
    let mut values = json!({
        "mode": "agent",
        "agent": {"proxyUrl": "https://authproxy.example.com:8443", "cluster": "edge",
                  "token": "edge-registration-token", "proxyCA": "-----BEGIN CERTIFICATE-----\n"},
    });
    if let (Some(agent), Value::Object(more)) = (values["agent"].as_object_mut(), more) {
        agent.extend(more);
    }
    let path = dir.join(format!("values-agent-{}.yaml", unique_marker("v")));
    std::fs::write(&path, serde_json::to_string_pretty(&values)?)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_mode_renders_hardened_agents_and_is_created_on_the_real_api_server(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let values = agent_values(dir.path(), json!({}))?;
    let chart = chart_dir();
    let out = helm(&[
        "lint",
        "--strict",
        &chart.to_string_lossy(),
        "--values",
        &values.to_string_lossy(),
    ])
    .await?;
    ensure!(out.status.success(), "lint: {}", output_text(&out));
    let yaml = template_text("edge", "authproxy-agent", &values, &[]).await?;
    let objects = parse_objects(&yaml)?;
    let mut kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Deployment",
            "Secret",
            "ServiceAccount"
        ]
    );
    let secret = one(&objects, "Secret")?;
    assert!(
        secret["data"]["token"].is_string() && secret["data"]["ca.crt"].is_string(),
        "{secret}"
    );
    for kind in ["Deployment", "DaemonSet"] {
        let spec = &one(&objects, kind)?["spec"]["template"]["spec"];
        ensure!(
            spec["securityContext"]["runAsNonRoot"] == true,
            "{kind}: {spec}"
        );
        let container = &spec["containers"][0];
        assert_eq!(container["args"], json!(["agent"]), "{kind}");
        let env: Vec<(String, String)> = container["env"]
            .as_array()
            .context("env")?
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_owned(),
                    e["value"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        for (name, value) in [
            ("AUTHPROXY_PROXY_URL", "https://authproxy.example.com:8443"),
            ("AUTHPROXY_CLUSTER", "edge"),
            ("AUTHPROXY_TOKEN_FILE", "/etc/authproxy/agent/token"),
            ("AUTHPROXY_PROXY_CA_FILE", "/etc/authproxy/agent/ca.crt"),
        ] {
            ensure!(
                env.contains(&(name.to_owned(), value.to_owned())),
                "{kind}: {name} in {env:?}"
            );
        }
        let sc = &container["securityContext"];
        ensure!(
            sc["readOnlyRootFilesystem"] == true && sc["capabilities"]["drop"] == json!(["ALL"]),
            "{kind}: {sc}"
        );
    }
    // The agent's flags are the ones the binary takes, set by these variables.
    let help = std::process::Command::new(authproxy_tests::authproxy_binary()?)
        .args(["agent", "--help"])
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in [
        "AUTHPROXY_PROXY_URL",
        "AUTHPROXY_CLUSTER",
        "AUTHPROXY_TOKEN_FILE",
        "AUTHPROXY_PROXY_CA_FILE",
        "AUTHPROXY_RESOLVE_INTERVAL",
        "AUTHPROXY_LOG_FORMAT",
        "AUTHPROXY_LOG_LEVEL",
    ] {
        ensure!(help.contains(variable), "{variable} in {help}");
    }
    // Without node agents, only the Deployment runs.
    let values = agent_values(dir.path(), json!({"nodeAgents": {"enabled": false}}))?;
    let objects = parse_objects(&template_text("edge", "authproxy-agent", &values, &[]).await?)?;
    ensure!(
        !objects.iter().any(|o| o["kind"] == "DaemonSet"),
        "a DaemonSet without nodeAgents"
    );
    // What agent mode needs is named when missing.
    for (missing, field) in [
        ("proxyUrl", "agent.proxyUrl"),
        ("cluster", "agent.cluster"),
        ("token", "agent.token"),
    ] {
        let values = agent_values(dir.path(), json!({missing: ""}))?;
        let error = template_text("edge", "authproxy-agent", &values, &[])
            .await
            .unwrap_err();
        ensure!(format!("{error:#}").contains(field), "{missing}: {error:#}");
    }
    // The real API server takes it.
    let kube = shared_kube().await?;
    let ns = namespace(kube, "agent").await?;
    let values = agent_values(dir.path(), json!({}))?;
    let yaml = template_text("edge", &ns, &values, &[]).await?;
    let out = admin_ok(kube, &["apply", "--dry-run=server", "-f", "-"], Some(&yaml)).await?;
    ensure!(out.contains("(server dry run)"), "{out}");
    admin_ok(kube, &["create", "-f", "-"], Some(&yaml)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_clusters_get_their_tokens_config_and_a_headless_service() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let values = values_file(
        dir.path(),
        &pki,
        "deployment",
        json!({"agentClusters": [{"name": "edge", "token": "edge-registration-token"}]}),
    )?;
    let objects = parse_objects(&template_text("authproxy", "authproxy", &values, &[]).await?)?;
    let config = chart_config(&objects)?;
    let edge = config
        .named_upstreams()
        .iter()
        .find(|u| u.name.as_deref() == Some("edge"))
        .context("edge in upstreams")?;
    assert_eq!(edge.via, proxy_core::config::Via::Agent);
    assert_eq!(
        edge.agent.as_ref().map(|a| a.token_file.clone()),
        Some("/etc/authproxy/agent-tokens/edge".into())
    );
    let tokens = objects
        .iter()
        .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "authproxy-agent-tokens")
        .context("the tokens Secret")?;
    assert!(tokens["data"]["edge"].is_string(), "{tokens}");
    let spec = pod_spec(&objects)?;
    let root = dir.path().join("mounted");
    write_mounted_files(&objects, spec, &root)?;
    let token = std::fs::read_to_string(root.join("etc/authproxy/agent-tokens/edge"))?;
    assert_eq!(token, "edge-registration-token");
    let headless = objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "authproxy-agents")
        .context("the headless Service")?;
    assert_eq!(headless["spec"]["clusterIP"], "None", "{headless}");
    Ok(())
}

/// A CustomResourceDefinition that accepts any `kind` object of `group`:
/// enough for the real kube-apiserver to take the Prometheus operator's
/// objects the chart renders (their schema is the operator's to check).
fn open_crd(group: &str, kind: &str, plural: &str) -> String {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.to_ascii_lowercase()},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    })
    .to_string()
}

/// The named port `name` of `ports` (a container's or a Service's).
fn named_port<'a>(ports: &'a Value, name: &Value) -> anyhow::Result<&'a Value> {
    ports
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == *name)
        .with_context(|| format!("no port {name} in {ports}"))
}

/// The chart as installed: the ServiceMonitor and the probes reach a
/// listener that answers them (metrics, liveness, readiness) while clients
/// hold every connection the proxy listener's caps allow; extra volumes are
/// mounted where the config points. Every object is created on the real
/// kube-apiserver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_the_service_monitor_reach_the_metrics_listener_past_the_caps(
) -> anyhow::Result<()> {
    let kube = shared_kube().await?;
    let ns = namespace(kube, "probes").await?;
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("sa-token");
    std::fs::write(&token_file, kube.proxy_token())?;
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "probe-token,probe-user,1,\"devs\"\n")?;
    let metrics_port = authproxy_tests::free_port()?;
    let values = values_file(
        dir.path(),
        &pki,
        "deployment",
        json!({
            "metrics": {"port": metrics_port, "serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true}},
            "extraVolumes": [{"name": "audit", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "audit", "mountPath": "/var/log/authproxy"}],
            "config": {
                "upstream": {"url": kube.url(), "caFile": kube.pki().ca_path(), "tokenFile": token_file},
                "authentication": {"staticTokens": {"file": tokens}},
                "limits": {"maxConnections": 2},
                "audit": {"path": "/var/log/authproxy/audit.log"},
                "logging": {"format": "text", "level": "warn"},
            },
        }),
    )?;
    let yaml = template_text("authproxy", &ns, &values, &[]).await?;
    for (kind, plural) in [
        ("ServiceMonitor", "servicemonitors"),
        ("PrometheusRule", "prometheusrules"),
    ] {
        admin_ok(
            kube,
            &["apply", "-f", "-"],
            Some(&open_crd("monitoring.coreos.com", kind, plural)),
        )
        .await?;
    }
    wait_for(
        Duration::from_secs(20),
        "the monitoring CRDs served",
        || async {
            let out = kube
                .admin_async(&["get", "servicemonitors,prometheusrules", "-A"], None)
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(Some(()))
            } else {
                Err(output_text(&out))
            }
        },
    )
    .await?;
    let out = admin_ok(kube, &["apply", "--dry-run=server", "-f", "-"], Some(&yaml)).await?;
    ensure!(out.contains("servicemonitor"), "{out}");
    admin_ok(kube, &["create", "-f", "-"], Some(&yaml)).await?;

    // What the ServiceMonitor points at: its port names a port of the
    // Service it selects, whose targetPort names a container port.
    let objects = parse_objects(&yaml)?;
    let monitor = one(&objects, "ServiceMonitor")?;
    let endpoint = &monitor["spec"]["endpoints"][0];
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let service = objects
        .iter()
        .find(|o| {
            o["kind"] == "Service"
                && o["spec"]["clusterIP"] != "None"
                && selector.as_object().is_some_and(|labels| {
                    labels.iter().all(|(k, v)| o["metadata"]["labels"][k] == *v)
                })
        })
        .context("no Service the ServiceMonitor selects")?;
    let service_port = named_port(&service["spec"]["ports"], &endpoint["port"])?;
    // The clients' Service (maybe a LoadBalancer) never carries it.
    for other in objects
        .iter()
        .filter(|o| o["kind"] == "Service" && o["metadata"]["name"] != service["metadata"]["name"])
    {
        ensure!(
            named_port(&other["spec"]["ports"], &endpoint["port"]).is_err(),
            "the metrics port is on {}",
            other["metadata"]["name"]
        );
    }
    ensure!(service["spec"]["type"] == "ClusterIP", "{service}");
    let spec = pod_spec(&objects)?;
    let root = tempfile::tempdir()?;
    let container = write_mounted_files(&objects, spec, root.path())?;
    let scrape_port = named_port(&container["ports"], &service_port["targetPort"])?;
    assert_eq!(scrape_port["containerPort"], metrics_port);
    let scheme = endpoint["scheme"].as_str().context("scheme")?;
    let path = endpoint["path"].as_str().context("path")?;

    // authproxy with the chart's files and config (its own data address)
    let config_path = root.path().join("etc/authproxy/config/authproxy.yaml");
    let text = std::fs::read_to_string(&config_path)?
        .replace(
            "/etc/authproxy/",
            &format!("{}/etc/authproxy/", root.path().display()),
        )
        .replace(
            "/var/log/authproxy/",
            &format!("{}/var/log/authproxy/", root.path().display()),
        );
    std::fs::write(&config_path, text)?;
    let mut config = FileConfig::load(&config_path)?;
    config.listen = "127.0.0.1:0".parse()?;
    let proxy = authproxy::server::start(&config, &config.base_dir(&config_path)).await?;
    let data = proxy.addr();
    let (code, body) = authproxy_tests::curl_with_ca(
        pki.ca_path(),
        &[
            "-H",
            "Authorization: Bearer probe-token",
            &format!("https://{data}/api/v1/namespaces/default/configmaps"),
        ],
    )
    .await?;
    ensure!(code == 200, "{code} {body}");
    ensure!(
        root.path().join("var/log/authproxy/audit.log").exists(),
        "the audit log is not in the extra volume"
    );

    // Clients hold every connection the proxy listener allows...
    let _held = [
        std::net::TcpStream::connect(data)?,
        std::net::TcpStream::connect(data)?,
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, _) = authproxy_tests::curl_with_ca(
        pki.ca_path(),
        &["--max-time", "3", &format!("https://{data}/livez")],
    )
    .await
    .unwrap_or((0, String::new()));
    ensure!(
        code != 200,
        "the proxy listener still answered: caps not full"
    );
    // ...and the probes and the scrape still get their answers.
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        let port = named_port(&container["ports"], &get["port"])?["containerPort"].clone();
        let probe_scheme = get["scheme"].as_str().context("scheme")?.to_lowercase();
        let url = format!(
            "{probe_scheme}://127.0.0.1:{port}{}",
            get["path"].as_str().context("path")?
        );
        let (code, body) = authproxy_tests::curl_with_ca(pki.ca_path(), &[&url]).await?;
        ensure!(code == 200, "{probe} {url}: {code} {body}");
    }
    let url = format!("{scheme}://127.0.0.1:{metrics_port}{path}");
    let (code, body) = authproxy_tests::curl_with_ca(pki.ca_path(), &[&url]).await?;
    ensure!(code == 200, "{url}: {code} {body}");
    ensure!(
        body.contains("authproxy_http_requests_total"),
        "{url} is not authproxy's metrics: {body}"
    );
    Ok(())
}
