//! Who a request acts as: the user, groups, uid and extra attributes that
//! authenticators produce and impersonation headers carry. A leaf: it
//! names no other module of the crate.

use std::collections::BTreeMap;

/// The identity of an authenticated user, as Kubernetes models it
/// (`authentication.k8s.io/v1` `UserInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserInfo {
    /// The user name; never empty for an authenticated user.
    pub username: String,
    /// A unique, stable identifier, when the identity source has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Group names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Additional attributes, keyed by a lower-case name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}
