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
