use super::*;
use http_body_util::BodyExt;
use proptest::prelude::*;

fn cluster(path_and_query: &str) -> Result<(String, String), RouteError> {
    match route(path_and_query)? {
        Route::Cluster {
            name,
            path_and_query,
        } => Ok((name.to_owned(), path_and_query)),
        Route::Default => Ok(("<default>".into(), path_and_query.to_owned())),
    }
}

#[test]
fn the_prefix_is_removed_and_the_query_kept() {
    for (input, name, rest) in [
        ("/k8s/clusters/east/api/v1/pods", "east", "/api/v1/pods"),
        ("/k8s/clusters/east", "east", "/"),
        ("/k8s/clusters/east/", "east", "/"),
        ("/k8s/clusters/east?timeout=1s", "east", "/?timeout=1s"),
        (
            "/k8s/clusters/east/api/v1/pods?watch=1&labelSelector=a%2F..",
            "east",
            "/api/v1/pods?watch=1&labelSelector=a%2F..",
        ),
        ("/k8s/clusters/east/api/../apis", "east", "/apis"),
        ("/k8s/clusters/east/api/./v1", "east", "/api/v1"),
        ("/k8s/clusters/east/x/../../east/api", "east", "/api"),
        ("/k8s/clusters", "", "/"),
        ("/api/v1/pods", "<default>", "/api/v1/pods"),
        (
            "/k8s/clustersx/east/api",
            "<default>",
            "/k8s/clustersx/east/api",
        ),
        (
            "/K8S/clusters/east/api",
            "<default>",
            "/K8S/clusters/east/api",
        ),
    ] {
        assert_eq!(
            cluster(input).unwrap(),
            (name.to_owned(), rest.to_owned()),
            "{input}"
        );
    }
}

#[test]
fn dot_segments_never_move_a_request_between_clusters() {
    for input in [
        "/k8s/clusters/a/../b/api",
        "/k8s/clusters/a/%2e%2e/b/api",
        "/k8s/clusters/a/.%2E/b/api",
        "/k8s/clusters/a/../../api",
        "/k8s/clusters/a/..",
        "/k8s/clusters/%2e%2e/b/api",
        "/k8s/./clusters/b/api",
        "/k8s/x/../clusters/b/api",
        "/api/../k8s/clusters/b/api",
        "/k8s/clusters/./b/api",
    ] {
        assert_eq!(cluster(input), Err(RouteError::CrossesClusters), "{input}");
    }
    assert_eq!(
        cluster("/k8s/clusters/a/..%2f..%2fb/api"),
        Err(RouteError::Path(PathError::EncodedSlashInDotSegment))
    );
}

#[test]
fn encoded_cluster_names_are_refused() {
    for input in ["/k8s/clusters/a%2fb/api", "/k8s/clusters/%61/api"] {
        assert_eq!(cluster(input), Err(RouteError::EncodedName), "{input}");
    }
    // An encoded dot is a dot: the name differs once decoded.
    assert_eq!(
        cluster("/k8s/clusters/a%2Eb/api"),
        Err(RouteError::CrossesClusters)
    );
}

#[test]
fn names_are_dns_labels() {
    for good in ["a", "east-1", "0", &"x".repeat(63)] {
        assert_eq!(validate_name(good), Ok(()), "{good}");
    }
    for (bad, problem) in [
        ("", NameError::Length),
        (&"x".repeat(64), NameError::Length),
        ("East", NameError::Characters),
        ("-a", NameError::Characters),
        ("a-", NameError::Characters),
        ("a.b", NameError::Characters),
        ("a/b", NameError::Characters),
        ("a%2f", NameError::Characters),
        ("a_b", NameError::Characters),
    ] {
        assert_eq!(validate_name(bad), Err(problem), "{bad}");
    }
}

#[test]
fn strip_cluster_prefix_reads_the_kube_path() {
    assert_eq!(
        strip_cluster_prefix("/k8s/clusters/a/api/v1/pods"),
        "/api/v1/pods"
    );
    assert_eq!(strip_cluster_prefix("/k8s/clusters/a"), "/");
    assert_eq!(strip_cluster_prefix("/api/v1/pods"), "/api/v1/pods");
}

type Echo =
    tower::util::BoxCloneService<Request<()>, Response<ProxyBody>, std::convert::Infallible>;

/// A service that answers "<label> <path and query> <cluster extension>".
fn echo(label: &'static str) -> Echo {
    tower::util::BoxCloneService::new(tower::service_fn(move |req: Request<()>| async move {
        let cluster = req
            .extensions()
            .get::<ClusterName>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        let text = format!("{label} {} {cluster}", req.uri());
        Ok::<_, std::convert::Infallible>(Response::new(ProxyBody::full(text)))
    }))
}

async fn send(router: &mut Router<Echo>, uri: &str) -> (u16, String) {
    let response = router
        .call(Request::get(uri).body(()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn requests_reach_the_named_cluster_or_a_status() {
    let mut router = Router::new(
        Some(echo("default")),
        vec![("east".into(), echo("east")), ("west".into(), echo("west"))],
    )
    .unwrap();
    assert_eq!(
        send(&mut router, "/k8s/clusters/west/api/v1/pods?watch=1").await,
        (200, "west /api/v1/pods?watch=1 west".into())
    );
    assert_eq!(
        send(&mut router, "/k8s/clusters/east").await,
        (200, "east / east".into())
    );
    assert_eq!(
        send(&mut router, "/api/v1/pods").await,
        (200, "default /api/v1/pods ".into())
    );
    let (code, body) = send(&mut router, "/k8s/clusters/north/api").await;
    assert_eq!(code, 404, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "NotFound");
    assert_eq!(status["code"], 404);
    assert!(body.contains("\\\"north\\\""), "{body}");
    let (code, body) = send(&mut router, "/k8s/clusters/east/../west/api").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"reason\":\"BadRequest\""), "{body}");
    let (code, body) = send(&mut router, "/k8s/clusters/NoRth%2f/api").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        !body.contains("NoRth"),
        "the caller's bytes are not echoed: {body}"
    );
}

#[tokio::test]
async fn without_a_default_unprefixed_paths_are_not_found() {
    let mut router = Router::new(None, vec![("east".into(), echo("east"))]).unwrap();
    let (code, body) = send(&mut router, "/api/v1/pods").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("NotFound"), "{body}");
}

#[tokio::test]
async fn a_single_upstream_sees_every_path_unchanged() {
    let mut router = Router::single(echo("only"));
    assert_eq!(
        send(&mut router, "/k8s/clusters/c1/api/../v3").await,
        (200, "only /k8s/clusters/c1/api/../v3 ".into())
    );
}

#[test]
fn bad_and_duplicate_names_are_refused() {
    let duplicate = Router::new(None, vec![("a".into(), echo("1")), ("a".into(), echo("2"))]);
    assert_eq!(duplicate.unwrap_err(), RouterError::Duplicate("a".into()));
    let bad = Router::new(None, vec![("A".into(), echo("1"))]);
    assert!(matches!(bad.unwrap_err(), RouterError::Name { .. }));
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("%2e%2e".to_owned()),
        Just(".%2E".to_owned()),
        Just("k8s".to_owned()),
        Just("clusters".to_owned()),
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("api".to_owned()),
        Just(String::new()),
    ]
}

proptest! {
    /// Whatever the dot-segments, a routed request is read by a server that
    /// decodes and resolves the whole path as below the cluster it names.
    #[test]
    fn a_routed_path_stays_below_its_cluster(
        segments in proptest::collection::vec(segment(), 0..8),
    ) {
        let path = format!("/k8s/clusters/a/{}", segments.join("/"));
        if let Ok(Route::Cluster { name, path_and_query }) = route(&path) {
            prop_assert_eq!(name, "a");
            let joined = format!("/k8s/clusters/a{path_and_query}");
            let decoded = percent_encoding::percent_decode_str(&joined).decode_utf8_lossy().into_owned();
            let mut resolved: Vec<&str> = Vec::new();
            for s in decoded.split('/').skip(1) {
                match s {
                    "." => {}
                    ".." => { resolved.pop(); }
                    other => resolved.push(other),
                }
            }
            prop_assert!(resolved.len() >= 3 && resolved[..3] == ["k8s", "clusters", "a"], "{} -> {:?}", path, resolved);
        }
    }
}
