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

/// Go's `%#v` of a `[]string`, as kube prints it in messages.
fn go_strings(values: &[String]) -> String {
    if values.is_empty() {
        return "[]string(nil)".into();
    }
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

/// Go's `%#v` of a `map[string][]string` (keys sorted, as Go prints maps).
fn go_extra(extra: &std::collections::BTreeMap<String, Vec<String>>) -> String {
    if extra.is_empty() {
        return "map[string][]string(nil)".into();
    }
    let entries: Vec<String> = extra
        .iter()
        .map(|(k, v)| format!("{k:?}:{}", go_strings(v)))
        .collect();
    format!("map[string][]string{{{}}}", entries.join(", "))
}

/// Applies `Impersonate-*` headers for `requester`: returns the effective
/// user. `request` is what the request itself asks to do: kube (1.37, with
/// constrained impersonation) words a refusal of an impersonator that holds
/// no impersonation right at all in terms of it.
pub fn effective_user(
    requester: &UserInfo,
    headers: &HeaderMap,
    rules: &[Rule],
    request: &Attributes,
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
            let uid = uids.first().cloned().unwrap_or_default();
            return Err(Refusal {
                code: StatusCode::BAD_REQUEST,
                message: format!(
                    "requested &user.DefaultInfo{{Name:\"\", UID:{uid:?}, Groups:{}, Extra:{}}} without impersonating a user name",
                    go_strings(&groups),
                    go_extra(&extra)
                ),
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
    let holds_any_right = rules
        .iter()
        .any(|rule| rule.grants_verb_to("impersonate", requester));
    if !holds_any_right {
        let mut constrained = request.clone();
        constrained.verb = format!("impersonate-on:user-info:{}", request.verb);
        return Err(Refusal {
            code: StatusCode::FORBIDDEN,
            message: constrained.forbidden_message(&requester.username),
        });
    }
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
