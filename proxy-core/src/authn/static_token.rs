//! Static bearer tokens from a file in kube-apiserver's `--token-auth-file`
//! format: one CSV record per token, `token,user,uid,"group1,group2"`.
//!
//! Tokens are looked up by their keyed SipHash ([`super::secret_key`]) and then
//! compared in constant time,
//! so neither the table's layout nor the comparison tells an attacker how much
//! of a guess was right. The file can be watched and is swapped in whole when
//! it changes; a broken edit keeps the previous table in force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

use super::{Authenticator, AuthnFuture, Identity, Source, UserInfo, Verification};
use crate::credential::Credential;
use crate::reload::{watch_file_reported, FileWatch, ReloadKind, ReloadReporter};

/// A problem in a token file. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum StaticTokenError {
    /// The file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record is malformed.
    #[error("token file {source_name}, line {line}: {problem}")]
    Record {
        /// The file (or other source) name.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
}

struct Entry {
    token: Box<[u8]>,
    identity: Arc<Identity>,
}

type Table = HashMap<u128, Entry>;

/// The static-token authenticator. Claims every Bearer token it knows; other
/// credentials are not its kind.
pub struct StaticTokens {
    table: ArcSwap<Table>,
    watch: std::sync::Mutex<Option<FileWatch>>,
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTokens")
            .field("tokens", &self.table.load().len())
            .finish()
    }
}

fn digest(token: &[u8]) -> u128 {
    super::secret_key::key(token)
}

impl StaticTokens {
    /// Parses CSV text; `source_name` names it in error messages.
    pub fn from_csv(text: &str, source_name: &str) -> Result<Self, StaticTokenError> {
        Ok(StaticTokens {
            table: ArcSwap::from_pointee(parse_table(text, source_name)?),
            watch: std::sync::Mutex::new(None),
        })
    }

    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Self, StaticTokenError> {
        let text = crate::reload::read_settled_to_string(path).map_err(|source| {
            StaticTokenError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        Self::from_csv(&text, &path.display().to_string())
    }

    /// Reads a token file and re-reads it every `interval` while the returned
    /// authenticator lives. Must be called within a tokio runtime.
    pub fn load_and_watch(path: &Path, interval: Duration) -> Result<Arc<Self>, StaticTokenError> {
        Self::load_and_watch_reported(path, interval, ReloadReporter::default())
    }

    /// Like [`StaticTokens::load_and_watch`], reporting each reload to `reporter`.
    pub fn load_and_watch_reported(
        path: &Path,
        interval: Duration,
        reporter: ReloadReporter,
    ) -> Result<Arc<Self>, StaticTokenError> {
        let initial =
            crate::reload::read_settled(path).map_err(|source| StaticTokenError::Read {
                path: path.to_owned(),
                source,
            })?;
        let name = path.display().to_string();
        let text = String::from_utf8_lossy(&initial).into_owned();
        let this = Arc::new(Self::from_csv(&text, &name)?);
        let weak = Arc::downgrade(&this);
        let watch = watch_file_reported(
            path.to_owned(),
            interval,
            initial,
            ReloadKind::StaticTokens,
            reporter,
            move |content| {
                let text =
                    std::str::from_utf8(content).map_err(|_| format!("{name} is not UTF-8"))?;
                let table = parse_table(text, &name).map_err(|e| e.to_string())?;
                if let Some(this) = weak.upgrade() {
                    this.table.store(Arc::new(table));
                }
                Ok(())
            },
        );
        if let Ok(mut slot) = this.watch.lock() {
            *slot = Some(watch);
        }
        Ok(this)
    }

    /// The number of tokens known.
    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Looks a token up; the caller's token is compared in constant time.
    pub fn lookup(&self, token: &str) -> Option<Arc<Identity>> {
        let table = self.table.load();
        let entry = table.get(&digest(token.as_bytes()))?;
        if bool::from(entry.token.ct_eq(token.as_bytes())) {
            Some(entry.identity.clone())
        } else {
            None
        }
    }
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthnFuture<'a> {
        let result = match credential {
            Credential::Bearer(token) => Ok(self.lookup(token.expose())),
            _ => Ok(None),
        };
        Box::pin(std::future::ready(result))
    }

    fn name(&self) -> &str {
        "static-tokens"
    }
}

fn parse_table(text: &str, source_name: &str) -> Result<Table, StaticTokenError> {
    let mut table = Table::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let problem = |problem: String| StaticTokenError::Record {
            source_name: source_name.to_owned(),
            line: line_no,
            problem,
        };
        if line.trim().is_empty() {
            continue;
        }
        let fields = parse_csv_record(line).map_err(|p| problem(p.to_owned()))?;
        if fields.len() < 3 {
            return Err(problem(format!(
                "needs at least 3 columns (token, user name, user uid), found {}",
                fields.len()
            )));
        }
        let (token, username, uid) = (&fields[0], &fields[1], &fields[2]);
        if token.is_empty() {
            return Err(problem("the token column is empty".into()));
        }
        if username.is_empty() {
            return Err(problem("the user name column is empty".into()));
        }
        let groups = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let user = UserInfo {
            username: username.clone(),
            uid: (!uid.is_empty()).then(|| uid.clone()),
            groups,
            extra: Default::default(),
        };
        let key = digest(token.as_bytes());
        if table.contains_key(&key) {
            return Err(problem("the same token appears on an earlier line".into()));
        }
        table.insert(
            key,
            Entry {
                token: token.as_bytes().into(),
                identity: Identity::verified(
                    user,
                    Verification {
                        source: Source::StaticToken,
                        ..Default::default()
                    },
                ),
            },
        );
    }
    Ok(table)
}

/// Splits one CSV record (RFC 4180 quoting; leading blanks of a field are
/// dropped, as kube's reader does). Multi-line fields are not supported.
pub(crate) fn parse_csv_record(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | '\t')) {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed"),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("unexpected character after a closing quote"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => {
                        fields.push(field);
                        break;
                    }
                    Some('"') => return Err("a quote inside an unquoted field"),
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Secret;

    const CSV: &str = "tok-alice,alice,1001,\"devs,ops\"\ntok-bob,bob,,\n\ntok-carol,carol,c1\n";

    #[test]
    fn kube_token_file_format_is_read() {
        let t = StaticTokens::from_csv(CSV, "t.csv").unwrap();
        assert_eq!(t.len(), 3);
        let alice = t.lookup("tok-alice").unwrap();
        assert_eq!(alice.user().username, "alice");
        assert_eq!(alice.user().uid.as_deref(), Some("1001"));
        assert_eq!(alice.user().groups, vec!["devs", "ops"]);
        let bob = t.lookup("tok-bob").unwrap();
        assert_eq!(bob.user().uid, None);
        assert!(bob.user().groups.is_empty());
        assert_eq!(t.lookup("tok-carol").unwrap().user().groups.len(), 0);
    }

    #[test]
    fn unknown_and_prefix_tokens_are_nobody() {
        let t = StaticTokens::from_csv(CSV, "t.csv").unwrap();
        assert!(t.lookup("tok-alic").is_none());
        assert!(t.lookup("tok-alicee").is_none());
        assert!(t.lookup("").is_none());
    }

    #[test]
    fn errors_name_the_file_and_line_but_not_the_token() {
        let err = StaticTokens::from_csv("ok,u,1\nsecrettoken,alice\n", "/etc/tokens.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/tokens.csv"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("secrettoken"), "{err}");
        let dup = StaticTokens::from_csv("a,u,1\na,v,2\n", "f")
            .unwrap_err()
            .to_string();
        assert!(dup.contains("line 2"), "{dup}");
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(
            parse_csv_record(r#"a, "b,c","d""e""#).unwrap(),
            vec!["a", "b,c", "d\"e"]
        );
        assert_eq!(parse_csv_record("a,,").unwrap(), vec!["a", "", ""]);
        assert!(parse_csv_record(r#"a,"b"#).is_err());
        assert!(parse_csv_record(r#"a,b"c"#).is_err());
    }

    #[tokio::test]
    async fn other_credentials_are_not_claimed() {
        let t = StaticTokens::from_csv(CSV, "t").unwrap();
        let basic = Credential::Basic {
            username: "alice".into(),
            password: Secret::new("tok-alice"),
            client: None,
        };
        assert!(t.authenticate(&basic).await.unwrap().is_none());
        let unknown = Credential::Bearer(Secret::new("nope"));
        assert!(t.authenticate(&unknown).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn file_is_reloaded_and_bad_edits_keep_the_old_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "t1,alice,1\n").unwrap();
        let t = StaticTokens::load_and_watch(&path, Duration::from_millis(10)).unwrap();
        std::fs::write(&path, "broken\n").unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            t.lookup("t1").is_some(),
            "a broken file must not replace the table"
        );
        std::fs::write(&path, "t2,bob,2\n").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while t.lookup("t2").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "reload not seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(t.lookup("t1").is_none());
    }
}
