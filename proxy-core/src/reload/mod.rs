//! Re-reading files that change under a running proxy: rotated serving
//! certificates and CAs, service-account tokens, edited token and
//! configuration files, bind passwords, signing keys.
//!
//! A watcher reads its files every interval (and at once when
//! [`check_all_now`] is called, which `authproxy` does on SIGHUP) and hands
//! their content on when any of them differs from what was seen last and
//! has held still for [`SETTLE`] (a file written in place is not taken
//! half-written). Reading
//! (rather than comparing mtimes) also catches the symlink swaps Kubernetes
//! uses for projected volumes and Secrets. A file that cannot be read or
//! parsed keeps the last good value in force; the refusal is logged with the
//! file and the reason (never the content) and reported to a
//! [`ReloadObserver`] (the proxy's metrics).
//!
//! [`tls`] holds the rustls pieces that swap certificates and CAs for new
//! handshakes while established connections go on.

pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The default interval between reads of a watched file.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// What a watched file is, as the `file` label of
/// `authproxy_config_reloads_total` names it (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadKind {
    /// A listener's serving certificate and key.
    ServingCert,
    /// The CA that verifies client certificates.
    ClientCa,
    /// The CA that verifies the API server.
    UpstreamCa,
    /// The proxy's own token for the API server.
    UpstreamToken,
    /// The configuration file's `authentication` section and the kube
    /// `AuthenticationConfiguration` file.
    Authentication,
    /// The LDAP service account's password file.
    LdapBindPassword,
    /// The signing keys of issued tokens.
    IssuedTokenKeys,
    /// The static token file.
    StaticTokens,
}

impl ReloadKind {
    /// Every kind that reports its reloads, for metrics that start each
    /// series at zero (the upstream token is not counted yet).
    pub const ALL: [ReloadKind; 7] = [
        ReloadKind::ServingCert,
        ReloadKind::ClientCa,
        ReloadKind::UpstreamCa,
        ReloadKind::Authentication,
        ReloadKind::LdapBindPassword,
        ReloadKind::IssuedTokenKeys,
        ReloadKind::StaticTokens,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadKind::ServingCert => "serving_cert",
            ReloadKind::ClientCa => "client_ca",
            ReloadKind::UpstreamCa => "upstream_ca",
            ReloadKind::UpstreamToken => "upstream_token",
            ReloadKind::Authentication => "authentication",
            ReloadKind::LdapBindPassword => "ldap_bind_password",
            ReloadKind::IssuedTokenKeys => "issued_token_keys",
            ReloadKind::StaticTokens => "static_tokens",
        }
    }
}

/// Told about every reload attempt (the proxy's metrics implement it).
pub trait ReloadObserver: Send + Sync + 'static {
    /// A changed `kind` file was taken (`success`) or refused.
    fn reload_result(&self, kind: ReloadKind, success: bool);
}

/// Where reload results go: nowhere, or a [`ReloadObserver`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct ReloadReporter {
    observer: Option<Arc<dyn ReloadObserver>>,
}

impl std::fmt::Debug for ReloadReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadReporter")
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

impl ReloadReporter {
    /// Reports to `observer`.
    pub fn new(observer: Arc<dyn ReloadObserver>) -> Self {
        ReloadReporter {
            observer: Some(observer),
        }
    }

    /// Reports one result.
    pub fn report(&self, kind: ReloadKind, success: bool) {
        if let Some(observer) = &self.observer {
            observer.reload_result(kind, success);
        }
    }
}

fn check_now_sender() -> &'static watch::Sender<u64> {
    static CHECK_NOW: OnceLock<watch::Sender<u64>> = OnceLock::new();
    CHECK_NOW.get_or_init(|| watch::channel(0).0)
}

/// Makes every watcher of the process read its files now, without waiting
/// for its interval (`authproxy` calls it on SIGHUP).
pub fn check_all_now() {
    check_now_sender().send_modify(|generation| *generation = generation.wrapping_add(1));
}

/// A running file watch. Dropping it stops the watch.
#[derive(Debug)]
pub struct FileWatch {
    task: JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches `path`, calling `on_change` with the new content whenever it
/// differs from `initial`, then from the last content seen.
///
/// `on_change` returns `Err(message)` when the content is not acceptable; the
/// message is logged (it must not hold secrets) and the same content is not
/// offered again. Must be called within a tokio runtime.
pub fn watch_file<F>(path: PathBuf, interval: Duration, initial: Vec<u8>, on_change: F) -> FileWatch
where
    F: FnMut(&[u8]) -> Result<(), String> + Send + 'static,
{
    watch_file_reported(
        path,
        interval,
        initial,
        ReloadKind::UpstreamToken,
        ReloadReporter::default(),
        on_change,
    )
}

/// Like [`watch_file`], reporting each result as `kind` to `reporter`.
pub fn watch_file_reported<F>(
    path: PathBuf,
    interval: Duration,
    initial: Vec<u8>,
    kind: ReloadKind,
    reporter: ReloadReporter,
    mut on_change: F,
) -> FileWatch
where
    F: FnMut(&[u8]) -> Result<(), String> + Send + 'static,
{
    watch_files(
        vec![path],
        interval,
        vec![initial],
        kind,
        reporter,
        move |contents| on_change(&contents[0]),
    )
}

/// Watches a group of files that change together (a certificate and its key,
/// a list of signing keys, a config file and the file it includes): when any
/// of them differs from what was seen last, `on_change` gets all their
/// contents, in the order of `paths`.
///
/// `initial` holds the contents already in force (same order). A refused
/// group is offered again every round (and on SIGHUP) until it is taken or
/// changes, its refusal logged and counted once: a certificate written
/// before its key is taken when the key follows, and a configuration that
/// names a file created later (or needs an identity provider that is down
/// for a while) is taken once that is there. An unreadable file counts as
/// one failure until it can be read again. Must be called within a tokio
/// runtime.
pub fn watch_files<F>(
    paths: Vec<PathBuf>,
    interval: Duration,
    initial: Vec<Vec<u8>>,
    kind: ReloadKind,
    reporter: ReloadReporter,
    mut on_change: F,
) -> FileWatch
where
    F: FnMut(&[Vec<u8>]) -> Result<(), String> + Send + 'static,
{
    watch_files_async(paths, interval, initial, kind, reporter, move |contents| {
        std::future::ready(on_change(&contents))
    })
}

/// Like [`watch_files`] with an `on_change` that may wait (to build a new
/// value and see it ready before it is swapped in). The files are not read
/// again until it has finished.
pub fn watch_files_async<F, Fut>(
    paths: Vec<PathBuf>,
    interval: Duration,
    initial: Vec<Vec<u8>>,
    kind: ReloadKind,
    reporter: ReloadReporter,
    mut on_change: F,
) -> FileWatch
where
    F: FnMut(Vec<Vec<u8>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let mut check_now = check_now_sender().subscribe();
    let task = tokio::spawn(async move {
        let names = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut last = initial;
        let mut failing = false;
        // The content in `last` was refused: it is offered again every round
        // (and on SIGHUP), since what refused it may have changed (a file it
        // names created since, an identity provider back up).
        let mut refused = false;
        // Rounds in a row whose new content did not hold still.
        let mut unsettled = 0u32;
        // Never zero (a ticker of 0s panics): a configuration that asks for
        // it is refused by validation, and an embedder's gets 1 ms.
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        check_now.mark_unchanged();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = check_now.changed() => {
                    if changed.is_err() {
                        // The sender is static and never dropped; keep ticking.
                        ticker.tick().await;
                    }
                }
            }
            let mut contents = Vec::with_capacity(paths.len());
            let mut unreadable = None;
            for path in &paths {
                match read_bounded(path).await {
                    Ok(content) => contents.push(content),
                    Err(error) => {
                        unreadable = Some((path, error));
                        break;
                    }
                }
            }
            if let Some((path, error)) = unreadable {
                if !failing {
                    tracing::warn!(file = %path.display(), kind = kind.as_str(), %error, "cannot read; keeping the previous content");
                    reporter.report(kind, false);
                }
                failing = true;
                continue;
            }
            failing = false;
            let again = contents == last;
            if again && !refused {
                continue;
            }
            // New content is taken only once it holds still: a file written
            // in place (truncated, then written in pieces) read half-way
            // would otherwise be taken for a whole one (a token file missing
            // its last users, a configuration cut short) for an interval.
            if !again && !settled(&paths, &contents).await {
                unsettled += 1;
                if unsettled == UNSETTLED_WARNING {
                    tracing::warn!(file = %names, kind = kind.as_str(), rounds = unsettled, "changes on every read; not taken until it holds still");
                    reporter.report(kind, false);
                } else {
                    tracing::debug!(file = %names, kind = kind.as_str(), "still being written; read again next round");
                }
                continue;
            }
            unsettled = 0;
            match on_change(contents.clone()).await {
                Ok(()) => {
                    tracing::info!(file = %names, kind = kind.as_str(), "reloaded");
                    reporter.report(kind, true);
                    refused = false;
                }
                // The same refused content once more: said and counted once.
                Err(message) if again => {
                    tracing::debug!(file = %names, kind = kind.as_str(), %message, "reload still refused");
                }
                Err(message) => {
                    tracing::warn!(file = %names, kind = kind.as_str(), %message, "reload refused; keeping the previous content, trying it again each interval");
                    reporter.report(kind, false);
                    refused = true;
                }
            }
            last = contents;
        }
    });
    FileWatch { task }
}

/// How long changed content must stay the same before it is taken.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Rounds in a row of changing content after which a watch warns (and
/// counts a failure): a file rewritten faster than it can be read whole.
const UNSETTLED_WARNING: u32 = 10;

/// Whether `paths` still hold `contents` after [`SETTLE`]: a writer that
/// pauses for less than that between its pieces is waited for.
async fn settled(paths: &[PathBuf], contents: &[Vec<u8>]) -> bool {
    tokio::time::sleep(SETTLE).await;
    for (path, content) in paths.iter().zip(contents) {
        match read_bounded(path).await {
            Ok(now) if &now == content => {}
            _ => return false,
        }
    }
    true
}

/// Reads `path` whole once it holds still, at start and on a reload: a file
/// modified less than [`SETTLE`] ago is read again after a pause, until two
/// reads agree (a few times at most), so a file being written in place is
/// not taken half-written. A file modified earlier is read once.
pub fn read_settled(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut content = std::fs::read(path)?;
    for _ in 0..5 {
        let age = std::fs::metadata(path)?
            .modified()
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        if age.is_some_and(|age| age >= SETTLE) {
            break;
        }
        std::thread::sleep(SETTLE);
        let again = std::fs::read(path)?;
        if again == content {
            break;
        }
        content = again;
    }
    Ok(content)
}

/// [`read_settled`] as UTF-8 text.
pub fn read_settled_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_settled(path)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The most a watched file may hold: certificates, keys, token files and
/// configuration are far smaller; a larger file is refused unread.
pub const MAX_WATCHED_FILE_BYTES: u64 = 16 << 20;

/// Reads `path` whole unless it is larger than [`MAX_WATCHED_FILE_BYTES`].
async fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let mut content = Vec::new();
    file.take(MAX_WATCHED_FILE_BYTES + 1)
        .read_to_end(&mut content)
        .await?;
    if content.len() as u64 > MAX_WATCHED_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_WATCHED_FILE_BYTES} bytes"),
        ));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[tokio::test]
    async fn change_is_reported_once_and_bad_content_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one").unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen2 = seen.clone();
        let _watch = watch_file(
            path.clone(),
            Duration::from_millis(10),
            b"one".to_vec(),
            move |c| {
                let s = String::from_utf8_lossy(c).into_owned();
                if s == "bad" {
                    return Err("refused".into());
                }
                seen2.lock().unwrap().push(s);
                Ok(())
            },
        );
        std::fs::write(&path, "bad").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // give the watcher a few rounds to observe "bad"
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&path, "two").unwrap();
        loop {
            if seen.lock().unwrap().as_slice() == ["two"] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saw {:?}",
                seen.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn refused_content_is_tried_again_until_what_refused_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "one").unwrap();
        // The new content names a file that appears only later, as a
        // ConfigMap can land before the Secret it refers to.
        let named = dir.path().join("secret");
        let taken = Arc::new(Mutex::new(Vec::<String>::new()));
        let taken2 = taken.clone();
        let counts = Arc::new(Counts::default());
        let named2 = named.clone();
        let _watch = watch_files(
            vec![path.clone()],
            Duration::from_millis(10),
            vec![b"one".to_vec()],
            ReloadKind::Authentication,
            ReloadReporter::new(counts.clone()),
            move |c| {
                if !named2.exists() {
                    return Err("the file it names is missing".into());
                }
                taken2
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&c[0]).into_owned());
                Ok(())
            },
        );
        std::fs::write(&path, "two").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while counts.1.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never refused");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Several rounds later: still refused, and counted once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(taken.lock().unwrap().is_empty());
        assert_eq!(counts.1.load(Ordering::SeqCst), 1);
        // The named file appears; the config file itself does not change.
        std::fs::write(&named, "s").unwrap();
        while taken.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never taken");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(taken.lock().unwrap().as_slice(), ["two"]);
        assert_eq!(counts.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_file_written_in_place_is_not_taken_half_written() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "x,xavier,0\n").unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen2 = seen.clone();
        let _watch = watch_file(
            path.clone(),
            Duration::from_millis(10),
            b"x,xavier,0\n".to_vec(),
            move |c| {
                seen2
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(c).into_owned());
                Ok(())
            },
        );
        // Truncated and written in two pieces, with a pause between them
        // several intervals long (and shorter than SETTLE).
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"a,alice,1\n").unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        file.write_all(b"b,bob,2\n").unwrap();
        drop(file);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never taken");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(SETTLE * 2).await;
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            ["a,alice,1\nb,bob,2\n"],
            "only the whole file is taken"
        );
    }

    #[test]
    fn a_file_read_while_it_is_written_is_read_once_it_holds_still() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"a,alice,1\n").unwrap();
        let first = std::time::Instant::now();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(80));
            file.write_all(b"b,bob,2\n").unwrap();
            std::time::Instant::now()
        });
        let called = std::time::Instant::now();
        let read = read_settled(&path).unwrap();
        let second = writer.join().unwrap();
        if read != b"a,alice,1\nb,bob,2\n" {
            // The first piece alone is right only where the file did hold
            // still for SETTLE: a machine so busy that this test's pause,
            // or its call, came SETTLE late.
            assert!(
                called - first >= SETTLE || second - first >= SETTLE,
                "half the file taken after a pause of {:?} (called after {:?})",
                second - first,
                called - first
            );
            assert_eq!(read, b"a,alice,1\n");
        }
        // A file that has held still is read at once.
        let old = dir.path().join("old");
        std::fs::write(&old, "x").unwrap();
        let file = std::fs::File::options().write(true).open(&old).unwrap();
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        let started = std::time::Instant::now();
        assert_eq!(read_settled_to_string(&old).unwrap(), "x");
        assert!(started.elapsed() < SETTLE);
    }

    #[tokio::test]
    async fn a_file_past_the_bound_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_WATCHED_FILE_BYTES + 1).unwrap();
        let error = read_bounded(&path).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        file.set_len(3).unwrap();
        assert_eq!(read_bounded(&path).await.unwrap().len(), 3);
    }

    #[derive(Default)]
    struct Counts(AtomicUsize, AtomicUsize);
    impl ReloadObserver for Counts {
        fn reload_result(&self, _kind: ReloadKind, success: bool) {
            if success { &self.0 } else { &self.1 }.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn check_all_now_reads_before_the_interval_and_results_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        let counts = Arc::new(Counts::default());
        let seen = Arc::new(Mutex::new(Vec::<Vec<Vec<u8>>>::new()));
        let seen2 = seen.clone();
        let _watch = watch_files(
            vec![a.clone(), b.clone()],
            Duration::from_secs(3600),
            vec![b"1".to_vec(), b"1".to_vec()],
            ReloadKind::ServingCert,
            ReloadReporter::new(counts.clone()),
            move |c| {
                if c[0] != c[1] {
                    return Err("pair does not match".into());
                }
                seen2.lock().unwrap().push(c.to_vec());
                Ok(())
            },
        );
        tokio::task::yield_now().await;
        std::fs::write(&a, "2").unwrap();
        let wait_for = |want_ok: usize, want_failed: usize| {
            let counts = counts.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    check_all_now();
                    let seen = (
                        counts.0.load(Ordering::SeqCst),
                        counts.1.load(Ordering::SeqCst),
                    );
                    if seen == (want_ok, want_failed) {
                        return;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "counts {seen:?}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        wait_for(0, 1).await;
        std::fs::write(&b, "2").unwrap();
        wait_for(1, 1).await;
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [vec![b"2".to_vec(), b"2".to_vec()]]
        );
    }
}
