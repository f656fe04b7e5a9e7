//! The revocations' store: [`SHARDS`] ConfigMaps in one namespace of the
//! Kubernetes API (`authproxy-revocations-0` … `-f` for sessions,
//! `authproxy-revocations-users` for user and time revocations, labelled
//! `authproxy.io/revocations=v1`), one entry per data key.
//!
//! Why ConfigMaps and not a custom resource: nothing has to be installed
//! cluster-wide (a namespace's Role is enough, for the chart, a webhook on
//! another cluster's nodes, or a namespace-only install), and a shard is
//! written whole with its `resourceVersion` (optimistic concurrency: two
//! replicas revoking at once both land, one after a retry). Size is bounded:
//! an entry expires with the longest token it covers and every write drops
//! expired entries, and 16 shards of at most 1 MiB hold well over 10,000
//! entries.
//!
//! Every process lists the shards, then watches them from the list's
//! `resourceVersion`; a broken watch is resumed, an expired one (`410
//! Gone`) listed again. Each event replaces one shard in memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt as _, Full};
use serde_json::{json, Value};

use super::{Entry, Revocations, SHARDS, WIDE_SHARD};
use crate::upstream::{Upstream, UpstreamError, UpstreamOptions};

/// The label every shard carries.
pub const LABEL: &str = "authproxy.io/revocations";
/// Its value (the format of the entries).
pub const LABEL_VALUE: &str = "v1";

/// The API group of the permission to revoke others' tokens.
pub const REVOCATIONS_GROUP: &str = "authproxy.io";
/// Its resource (RBAC names it; nothing of this kind is stored).
pub const REVOCATIONS_RESOURCE: &str = "revocations";

/// How long one request to the store may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watch runs before it is started again (the server ends it
/// then; a connection that died without a word is found by the silence
/// limit, [`WATCH_SECONDS`] + 30 s).
const WATCH_SECONDS: u64 = 60;
/// How many times a write is tried against concurrent writers.
const WRITE_ATTEMPTS: usize = 16;
/// The largest answer read (a list of every shard, or one event).
const MAX_ANSWER: usize = 32 << 20;

/// The name of shard `index`.
pub fn shard_name(index: usize) -> String {
    if index == WIDE_SHARD {
        "authproxy-revocations-users".to_owned()
    } else {
        format!("authproxy-revocations-{index:x}")
    }
}

/// Every shard's name.
pub fn shard_names() -> Vec<String> {
    (0..SHARDS).map(shard_name).collect()
}

fn shard_index(name: &str) -> Option<usize> {
    (0..SHARDS).find(|i| shard_name(*i) == name)
}

/// A store problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The API server could not be reached or did not answer in time.
    #[error("the revocation store cannot be reached: {0}")]
    Unreachable(String),
    /// The API server refused or failed the request.
    #[error("the revocation store answered {status}: {message}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
    /// Writers kept conflicting.
    #[error("the revocation store kept changing under the write; try again")]
    Contended,
}

/// The revocations' shards in one namespace, reached as the proxy.
#[derive(Clone)]
pub struct RevocationStore {
    client: Upstream<Full<Bytes>>,
    namespace: String,
}

impl std::fmt::Debug for RevocationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationStore")
            .field("namespace", &self.namespace)
            .finish()
    }
}

fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

impl RevocationStore {
    /// The store in `namespace` of the API server `options` reach.
    pub fn new(options: UpstreamOptions, namespace: &str) -> Result<Self, UpstreamError> {
        Ok(RevocationStore {
            client: Upstream::new(options)?,
            namespace: namespace.to_owned(),
        })
    }

    /// The namespace of the shards.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Bytes), StoreError> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("authproxy-revocations/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| StoreError::Unreachable(e.to_string()))?;
        let mut client = self.client.clone();
        let answer = async {
            let response = tower_service::Service::call(&mut client, request)
                .await
                .map_err(|e| StoreError::Unreachable(e.to_string()))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| StoreError::Unreachable(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, answer)
            .await
            .map_err(|_| StoreError::Unreachable(format!("no answer in {REQUEST_TIMEOUT:?}")))?
    }

    fn shards_path(&self) -> String {
        format!("/api/v1/namespaces/{}/configmaps", self.namespace)
    }

    /// Writes `entry` into its shard (merged with an entry of the same key,
    /// expired entries dropped), retrying when another writer got there
    /// first.
    pub async fn revoke(&self, entry: &Entry) -> Result<(), StoreError> {
        let name = shard_name(entry.shard());
        let key = entry.key();
        let path = format!("{}/{name}", self.shards_path());
        let now = super::now_secs();
        for _ in 0..WRITE_ATTEMPTS {
            let (status, body) = self.send(Method::GET, &path, None).await?;
            let outcome = if status == StatusCode::NOT_FOUND {
                let object = json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": self.namespace, "labels": {LABEL: LABEL_VALUE}},
                    "data": {key.clone(): serde_json::to_string(entry).unwrap_or_default()},
                });
                self.send(Method::POST, &self.shards_path(), Some(object))
                    .await?
            } else if status.is_success() {
                let mut object: Value = serde_json::from_slice(&body).map_err(|e| {
                    StoreError::Unreachable(format!("{name} is not a ConfigMap: {e}"))
                })?;
                let mut data: BTreeMap<String, String> =
                    serde_json::from_value(object["data"].take()).unwrap_or_default();
                // Expired entries go; entries this version cannot read (a
                // newer format) stay.
                data.retain(|_, value| {
                    serde_json::from_str::<Entry>(value).map_or(true, |e| e.expires >= now)
                });
                let existing = data
                    .get(&key)
                    .and_then(|v| serde_json::from_str::<Entry>(v).ok());
                let merged = match existing {
                    // Nothing to add: no write, no event for every replica.
                    Some(existing) if entry.covered_by(&existing) => return Ok(()),
                    Some(existing) => existing.merged(entry),
                    None => entry.clone(),
                };
                data.insert(
                    key.clone(),
                    serde_json::to_string(&merged).unwrap_or_default(),
                );
                object["data"] = serde_json::to_value(&data).unwrap_or_default();
                object["metadata"]["labels"][LABEL] = json!(LABEL_VALUE);
                // The resourceVersion read stays in the object: the update
                // is refused (409) if the shard changed since.
                self.send(Method::PUT, &path, Some(object)).await?
            } else {
                return Err(StoreError::Refused {
                    status,
                    message: message_of(&body),
                });
            };
            match outcome.0 {
                s if s.is_success() => return Ok(()),
                StatusCode::CONFLICT => continue,
                status => {
                    return Err(StoreError::Refused {
                        status,
                        message: message_of(&outcome.1),
                    })
                }
            }
        }
        Err(StoreError::Contended)
    }

    /// Whether kube's authorizer lets `user` create
    /// `revocations.authproxy.io` in the store's namespace (a
    /// `SubjectAccessReview` sent as the proxy): the check for revoking
    /// anyone's tokens but one's own.
    pub async fn may_revoke(&self, user: &crate::authn::UserInfo) -> Result<bool, StoreError> {
        // kube adds system:authenticated to every authenticated user's
        // groups (as it does for an impersonated one); a review does not.
        let mut groups = user.groups.clone();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".to_owned());
        }
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user.username,
                "groups": groups,
                "uid": user.uid.clone().unwrap_or_default(),
                "extra": user.extra,
                "resourceAttributes": {
                    "namespace": self.namespace,
                    "verb": "create",
                    "group": REVOCATIONS_GROUP,
                    "resource": REVOCATIONS_RESOURCE,
                },
            },
        });
        let (status, body) = self
            .send(
                Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                Some(review),
            )
            .await?;
        if !status.is_success() {
            return Err(StoreError::Refused {
                status,
                message: message_of(&body),
            });
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| StoreError::Unreachable(format!("the review is not JSON: {e}")))?;
        Ok(answer["status"]["allowed"] == true)
    }

    /// Lists every shard into `into`; the list's `resourceVersion`.
    async fn list(&self, into: &Revocations) -> Result<String, StoreError> {
        let path = format!(
            "{}?labelSelector={LABEL}%3D{LABEL_VALUE}",
            self.shards_path()
        );
        let (status, body) = self.send(Method::GET, &path, None).await?;
        if !status.is_success() {
            return Err(StoreError::Refused {
                status,
                message: message_of(&body),
            });
        }
        let list: Value = serde_json::from_slice(&body)
            .map_err(|e| StoreError::Unreachable(format!("the list is not JSON: {e}")))?;
        let mut found = vec![None; SHARDS];
        for item in list["items"].as_array().into_iter().flatten() {
            if let Some(index) = item["metadata"]["name"].as_str().and_then(shard_index) {
                found[index] = Some(data_of(item));
            }
        }
        for (index, data) in found.into_iter().enumerate() {
            into.replace_shard(index, &data.unwrap_or_default());
        }
        Ok(list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Watches from `version` until the watch ends; the last version seen.
    /// `Ok(None)` when the version is too old (list again).
    async fn watch_from(
        &self,
        version: &str,
        into: &Revocations,
    ) -> Result<Option<String>, StoreError> {
        let path = format!(
            "{}?labelSelector={LABEL}%3D{LABEL_VALUE}&watch=1&allowWatchBookmarks=true&resourceVersion={version}&timeoutSeconds={WATCH_SECONDS}",
            self.shards_path()
        );
        let request = http::Request::get(path)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("authproxy-revocations/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::new()))
            .map_err(|e| StoreError::Unreachable(e.to_string()))?;
        let mut client = self.client.clone();
        let response = tokio::time::timeout(
            REQUEST_TIMEOUT,
            tower_service::Service::call(&mut client, request),
        )
        .await
        .map_err(|_| StoreError::Unreachable("no answer to the watch".into()))?
        .map_err(|e| StoreError::Unreachable(e.to_string()))?;
        let status = response.status();
        if status == StatusCode::GONE {
            return Ok(None);
        }
        if !status.is_success() {
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(StoreError::Refused {
                status,
                message: message_of(&body),
            });
        }
        into.store_reached();
        let mut version = version.to_owned();
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        // The server sends a bookmark or an event at least every minute or
        // so; silence far longer than that is a dead connection.
        let silence = Duration::from_secs(WATCH_SECONDS + 30);
        loop {
            let frame = match tokio::time::timeout(silence, body.frame()).await {
                Err(_) => return Err(StoreError::Unreachable("the watch went silent".into())),
                Ok(None) => return Ok(Some(version)),
                Ok(Some(Err(e))) => return Err(StoreError::Unreachable(e.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            if pending.len() > MAX_ANSWER {
                return Err(StoreError::Unreachable("a watch event is too large".into()));
            }
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let object = &event["object"];
                if let Some(v) = object["metadata"]["resourceVersion"].as_str() {
                    version = v.to_owned();
                }
                match event["type"].as_str() {
                    Some("ADDED" | "MODIFIED") => {
                        if let Some(index) =
                            object["metadata"]["name"].as_str().and_then(shard_index)
                        {
                            into.replace_shard(index, &data_of(object));
                        }
                    }
                    Some("DELETED") => {
                        if let Some(index) =
                            object["metadata"]["name"].as_str().and_then(shard_index)
                        {
                            into.replace_shard(index, &BTreeMap::new());
                        }
                    }
                    Some("ERROR") => {
                        return if object["code"] == 410 {
                            Ok(None)
                        } else {
                            Err(StoreError::Refused {
                                status: StatusCode::from_u16(
                                    object["code"].as_u64().unwrap_or(500) as u16,
                                )
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                                message: object["message"].as_str().unwrap_or_default().to_owned(),
                            })
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    /// Keeps `into` up to date while the returned task runs: lists, then
    /// watches; when the store cannot be reached it says so in `into` and
    /// tries again (1 s, doubling to 30 s).
    pub fn keep(self: Arc<Self>, into: Arc<Revocations>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            let mut version: Option<String> = None;
            loop {
                let result = match version.clone() {
                    None => self.list(&into).await.map(Some),
                    Some(from) => self.watch_from(&from, &into).await,
                };
                match result {
                    Ok(next) => {
                        if version.is_none() {
                            into.store_reached();
                        }
                        version = next;
                        delay = Duration::from_secs(1);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "revocations: keeping the last known set");
                        into.store_unreachable(error.to_string());
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        })
    }
}

fn data_of(object: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(object["data"].clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_read_back_and_nothing_else_is_a_shard() {
        for index in 0..SHARDS {
            assert_eq!(shard_index(&shard_name(index)), Some(index));
        }
        assert_eq!(shard_name(WIDE_SHARD), "authproxy-revocations-users");
        assert_eq!(shard_index("authproxy-revocations-10"), None);
        assert_eq!(shard_index("authproxy-revocations-0a"), None);
        assert_eq!(shard_index("other"), None);
    }
}
