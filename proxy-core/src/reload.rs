//! Re-reading files that change under a running proxy: rotated
//! service-account tokens, edited token files.
//!
//! A watcher reads the file every interval and hands its content on when it
//! differs from what was seen last. Reading (rather than comparing mtimes)
//! also catches the symlink swaps Kubernetes uses for projected volumes. A
//! file that cannot be read or parsed keeps the last good content in force.

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

/// The default interval between reads of a watched file.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

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
pub fn watch_file<F>(
    path: PathBuf,
    interval: Duration,
    initial: Vec<u8>,
    mut on_change: F,
) -> FileWatch
where
    F: FnMut(&[u8]) -> Result<(), String> + Send + 'static,
{
    let task = tokio::spawn(async move {
        let mut last = initial;
        let mut failing = false;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match tokio::fs::read(&path).await {
                Ok(content) => {
                    failing = false;
                    if content != last {
                        match on_change(&content) {
                            Ok(()) => tracing::info!(file = %path.display(), "reloaded"),
                            Err(message) => {
                                tracing::warn!(file = %path.display(), %message, "reload refused; keeping the previous content")
                            }
                        }
                        last = content;
                    }
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(file = %path.display(), %error, "cannot read; keeping the previous content");
                    }
                    failing = true;
                }
            }
        }
    });
    FileWatch { task }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
}
