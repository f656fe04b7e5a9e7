//! Which serving thread the current code runs on.
//!
//! A server that runs one single-threaded event loop per CPU (as `authproxy`
//! does) marks each of those threads with [`enter`]. The upstream client then
//! keeps each thread's requests on connections that thread opened, so a
//! request, its upstream stream and the connection task that carries it run
//! on one thread, without waking another. On threads that were not marked
//! (a multi-threaded runtime), connections are shared by all.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the current thread as serving thread `index` (from 0).
pub fn enter(index: usize) {
    WORKER.with(|w| w.set(Some(index)));
}

/// The serving thread the current thread was marked as, if any.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// The most serving threads a server may mark; per-thread state (the
/// upstream's HTTP/1.1 pools) has room for this many.
pub const MAX_THREADS: usize = 1024;

/// How many serving threads to run by default: one per CPU the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// For tests: a serving thread with a single-threaded runtime of its own,
/// which keeps driving what its work opened (upstream connections) until
/// stopped.
#[cfg(test)]
pub(crate) struct TestThread {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

#[cfg(test)]
impl TestThread {
    /// Starts serving thread `index`, runs `work` on it and returns once
    /// `work` has finished (panicking if it did).
    pub(crate) fn run<F>(index: usize, work: F) -> TestThread
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done, worked) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(index);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                work.await;
                let _ = done.send(());
                let _ = stopped.await;
            });
        });
        if worked.recv().is_err() {
            // The work panicked: show why.
            std::panic::resume_unwind(thread.join().unwrap_err());
        }
        TestThread { stop, thread }
    }

    /// Stops the thread's runtime and waits for the thread to end.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_unmarked_until_it_enters() {
        let seen = std::thread::spawn(|| {
            let before = current();
            enter(3);
            (before, current())
        })
        .join()
        .unwrap();
        assert_eq!(seen, (None, Some(3)));
        // Marking another thread leaves this one alone.
        assert_eq!(current(), None);
    }
}
