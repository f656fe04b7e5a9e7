//! kube-apiserver's impersonation filter, as the double applies it.

use http::{HeaderMap, StatusCode};

use super::rbac::{allowed, Attributes, Rule, UserInfo};

/// Why impersonation was refused: the HTTP code and kube's message.
pub struct Refusal {
    pub code: StatusCode,
    pub message: String,
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Applies `Impersonate-*` headers for `requester`: returns the effective user.
pub fn effective_user(
    requester: &UserInfo,
    headers: &HeaderMap,
    rules: &[Rule],
) -> Result<UserInfo, Refusal> {
    let users = values(headers, "impersonate-user");
    let groups = values(headers, "impersonate-group");
    let uids = values(headers, "impersonate-uid");
    let mut extra = std::collections::BTreeMap::<String, Vec<String>>::new();
    for name in headers.keys() {
        if let Some(encoded) = name.as_str().strip_prefix("impersonate-extra-") {
            let key = percent_encoding::percent_decode_str(encoded)
                .decode_utf8_lossy()
                .to_lowercase();
            extra
                .entry(key)
                .or_default()
                .extend(values(headers, name.as_str()));
        }
    }
    if users.is_empty() {
        if !groups.is_empty() || !uids.is_empty() || !extra.is_empty() {
            return Err(Refusal {
                code: StatusCode::BAD_REQUEST,
                message: format!("requested [groups {groups:?} uid {uids:?} extra {extra:?}] without impersonating a user"),
            });
        }
        return Ok(requester.clone());
    }
    let check = |attrs: Attributes| -> Result<(), Refusal> {
        if allowed(rules, requester, &attrs) {
            Ok(())
        } else {
            Err(Refusal {
                code: StatusCode::FORBIDDEN,
                message: attrs.forbidden_message(&requester.username),
            })
        }
    };
    let impersonate = |api_group: &str, resource: String, name: &str, namespace: &str| Attributes {
        verb: "impersonate".into(),
        api_group: api_group.into(),
        resource,
        name: name.into(),
        namespace: namespace.into(),
        path: None,
    };
    let username = users[0].clone();
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, name)) => check(impersonate("", "serviceaccounts".into(), name, ns))?,
        None => check(impersonate("", "users".into(), &username, ""))?,
    }
    for g in &groups {
        check(impersonate("", "groups".into(), g, ""))?;
    }
    for u in &uids {
        check(impersonate("authentication.k8s.io", "uids".into(), u, ""))?;
    }
    for (key, vals) in &extra {
        for v in vals {
            check(impersonate(
                "authentication.k8s.io",
                format!("userextras/{key}"),
                v,
                "",
            ))?;
        }
    }
    let mut effective = UserInfo {
        username: username.clone(),
        uid: uids.first().cloned().unwrap_or_default(),
        groups,
        extra,
    };
    if let Some((ns, _)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        effective.groups.push("system:serviceaccounts".into());
        effective
            .groups
            .push(format!("system:serviceaccounts:{ns}"));
    }
    if username != "system:anonymous"
        && !effective.groups.iter().any(|g| g == "system:authenticated")
    {
        effective.groups.push("system:authenticated".into());
    }
    Ok(effective)
}
