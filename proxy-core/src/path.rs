//! Request paths joined below the upstream URL's path prefix, never above it.
//!
//! An upstream URL may carry a path prefix (`https://rancher/k8s/clusters/c1`).
//! A request path with dot-segments (`/../../v3/settings`) must not climb out
//! of it, whoever resolves them later: the API server, a router in front of
//! it, or an HTTP library on the way. Go's `net/http` (and so kube-apiserver)
//! percent-decodes the path before looking at it, so `%2e%2e` is `..` and
//! `..%2f..` is `../..` there.
//!
//! [`normalize`] therefore:
//! 1. decodes `%2e` / `%2E` to `.` (RFC 3986 §6.2.2.2: an encoded unreserved
//!    character is the character itself), leaving every other escape as sent;
//! 2. refuses a segment that holds an encoded slash (`%2f`, `%2F`) and becomes
//!    a dot-segment once that slash is decoded (`..%2f..`, `x%2f..`): there is
//!    no reading of it that is both faithful and safe;
//! 3. removes dot-segments as RFC 3986 §5.2.4 does (`/a/b/../c` → `/a/c`,
//!    `/..` → `/`).
//!
//! A path with no `%` and no segment starting with `.` is returned as it
//! is, without allocating.

use std::borrow::Cow;

/// The `/`-separated segments of `path` with its leading and trailing
/// slashes removed; empty segments (`a//b`) are kept. The same as
/// `path.trim_matches('/').split('/')`, scanning bytes instead of decoding
/// characters: this runs on every request.
pub(crate) fn segments(path: &str) -> Segments<'_> {
    let bytes = path.as_bytes();
    let start = bytes.iter().position(|&b| b != b'/').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b'/')
        .map_or(start, |i| i + 1);
    Segments {
        rest: path.get(start..end).unwrap_or(""),
        done: false,
    }
}

/// Iterator of [`segments`].
pub(crate) struct Segments<'a> {
    rest: &'a str,
    done: bool,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.done {
            return None;
        }
        match self.rest.as_bytes().iter().position(|&b| b == b'/') {
            Some(i) => {
                // `/` is ASCII: both ends are character boundaries.
                let (segment, rest) = self.rest.split_at(i);
                self.rest = rest.get(1..).unwrap_or("");
                Some(segment)
            }
            None => {
                self.done = true;
                Some(self.rest)
            }
        }
    }
}

/// A request path that cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The request target is not an absolute path (`*`, or empty authority form).
    #[error("the request path must start with '/'")]
    NotAbsolute,
    /// A segment turns into `.` or `..` once its encoded slash is decoded.
    #[error("the request path holds a dot-segment hidden behind an encoded slash (%2F)")]
    EncodedSlashInDotSegment,
}

fn is_dot_segment(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// Decodes `%2e`/`%2E` to `.`, leaving every other byte and escape unchanged.
fn decode_dots(path: &str) -> Cow<'_, str> {
    if !path.contains("%2e") && !path.contains("%2E") {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && bytes.get(i + 1) == Some(&b'2')
            && matches!(bytes.get(i + 2), Some(b'e' | b'E'))
        {
            out.push('.');
            i += 3;
            continue;
        }
        // Copy one whole character (the path is UTF-8: it is a `&str`).
        let len = path[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&path[i..i + len]);
        i += len;
    }
    Cow::Owned(out)
}

/// True when `segment`, split at its encoded slashes, has a dot-segment piece.
fn hides_dot_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    lower.contains("%2f") && lower.split("%2f").any(is_dot_segment)
}

/// `uri` with its path [`normalize`]d, when that changes it (`Ok(None)`:
/// the path is already as it will be forwarded). The query is kept as sent.
#[cfg(feature = "observe")]
pub fn normalize_uri(uri: &http::Uri) -> Result<Option<http::Uri>, PathError> {
    let Cow::Owned(path) = normalize(uri.path())? else {
        return Ok(None);
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query).map_err(|_| PathError::NotAbsolute)?,
    );
    Ok(http::Uri::from_parts(parts).ok())
}

/// The path with its dot-segments removed (see the module docs), or why it
/// cannot be forwarded. `path` is the path part of a request target, without
/// the query; an empty path is `/`.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // A dot-segment starts with '.' (or an escape): `/apis/rbac.authorization.k8s.io/v1`
    // has neither "/." nor '%' and takes this path.
    if !path.contains('%') && !path.contains("/.") {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_dots(path);
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    if segments.iter().any(|s| hides_dot_segment(s)) {
        return Err(PathError::EncodedSlashInDotSegment);
    }
    if !segments.iter().copied().any(is_dot_segment) {
        return Ok(match decoded {
            Cow::Borrowed(_) => Cow::Borrowed(path),
            Cow::Owned(owned) => Cow::Owned(owned),
        });
    }
    let mut output: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {}
            ".." => {
                output.pop();
            }
            other => output.push(other),
        }
        // A dot-segment at the end leaves the path ending in '/'.
        if i == last && is_dot_segment(segment) {
            output.push("");
        }
    }
    Ok(Cow::Owned(format!("/{}", output.join("/"))))
}

/// `prefix` (no trailing `/`, possibly empty) followed by the normalized path
/// of `path_and_query`, and its query unchanged.
pub fn join(prefix: &str, path_and_query: &str) -> Result<String, PathError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let path = normalize(path)?;
    let mut out = String::with_capacity(prefix.len() + path_and_query.len());
    out.push_str(prefix);
    out.push_str(&path);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        for (input, expected) in [
            ("/api/v1/pods", "/api/v1/pods"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/a/b/..", "/a/"),
            ("/a/./", "/a/"),
            ("/..", "/"),
            ("/../../etc", "/etc"),
            ("/a//../b", "/a/b"),
            ("/%2e%2e/%2E%2e/v3", "/v3"),
            ("/.%2e/x", "/x"),
            ("/api/v1/namespaces/a.b/pods", "/api/v1/namespaces/a.b/pods"),
            ("/a/...", "/a/..."),
            ("/a/%252e%252e/b", "/a/%252e%252e/b"),
            ("/a/x%2Fy", "/a/x%2Fy"),
            ("", "/"),
        ] {
            assert_eq!(normalize(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn encoded_slashes_inside_dot_segments_are_refused() {
        for input in [
            "/a/..%2f..%2fv3",
            "/a/..%2F",
            "/a/%2e%2e%2fb",
            "/a/x%2f..",
            "/a/%2F.",
        ] {
            assert_eq!(
                normalize(input),
                Err(PathError::EncodedSlashInDotSegment),
                "{input}"
            );
        }
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn the_query_is_kept_and_never_normalized() {
        assert_eq!(
            join(
                "/k8s/clusters/c1",
                "/api/../api/v1/pods?fieldSelector=a%2F..&w=1"
            )
            .unwrap(),
            "/k8s/clusters/c1/api/v1/pods?fieldSelector=a%2F..&w=1"
        );
        assert_eq!(join("", "/api?x=/../").unwrap(), "/api?x=/../");
    }

    /// How a server that percent-decodes the whole path and then resolves
    /// dot-segments reads `path`: its segments after resolution.
    fn resolved_by_a_decoding_server(path: &str) -> Vec<String> {
        let decoded = percent_encoding::percent_decode_str(path)
            .decode_utf8_lossy()
            .into_owned();
        let mut out: Vec<String> = Vec::new();
        for segment in decoded.split('/').skip(1) {
            match segment {
                "." => {}
                ".." => {
                    out.pop();
                }
                other => out.push(other.to_owned()),
            }
        }
        out
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just("%2e%2e".to_owned()),
            Just("%2E%2e".to_owned()),
            Just(".%2E".to_owned()),
            Just("%2e".to_owned()),
            Just("..%2f..".to_owned()),
            Just("..%2F".to_owned()),
            Just("x%2f..".to_owned()),
            Just("%2fa".to_owned()),
            Just("%252e%252e".to_owned()),
            Just(String::new()),
            "[a-z]{1,4}",
            "[a-z.%2eEfF]{1,6}",
        ]
    }

    #[test]
    fn segments_of_fixed_paths() {
        for (path, expected) in [
            ("", vec![""]),
            ("/", vec![""]),
            ("///", vec![""]),
            ("/api/v1/pods", vec!["api", "v1", "pods"]),
            ("api//v1/", vec!["api", "", "v1"]),
            ("/é/ü/", vec!["é", "ü"]),
        ] {
            assert_eq!(segments(path).collect::<Vec<_>>(), expected, "{path:?}");
        }
    }

    proptest! {
        #[test]
        fn no_path_climbs_out_of_the_prefix(
            segments in proptest::collection::vec(segment(), 0..8),
        ) {
            let prefix = "/k8s/clusters/c1";
            let path = format!("/{}", segments.join("/"));
            if let Ok(joined) = join(prefix, &path) {
                prop_assert!(joined.starts_with("/k8s/clusters/c1/"), "{joined}");
                let resolved = resolved_by_a_decoding_server(&joined);
                prop_assert!(
                    resolved.len() >= 3 && resolved[..3] == ["k8s", "clusters", "c1"],
                    "{path} -> {joined} resolves to {resolved:?}"
                );
            }
        }

        #[test]
        fn segments_split_as_str_split_does(path in "[/a-zé.]{0,16}") {
            let expected: Vec<&str> = path.trim_matches('/').split('/').collect();
            prop_assert_eq!(segments(&path).collect::<Vec<_>>(), expected);
        }

        #[test]
        fn plain_paths_pass_unchanged(path in "(/[a-zA-Z0-9_:-][a-zA-Z0-9_:.-]{0,8}){1,6}") {
            prop_assert_eq!(normalize(&path).unwrap(), path.as_str());
        }
    }
}
