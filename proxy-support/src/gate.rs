//! A future that is polled only after it woke its task.
//!
//! A `select!` loop polls every branch each time its task wakes. A loop that
//! drives a connection wakes for each frame, while its other branches (a
//! timer, a shutdown signal) fire rarely; polling those on every wake costs
//! more than the wake itself. [`Gated`] skips them until they ask for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Wraps a future so that it is polled only when it has woken the task, or
/// when the task's waker has changed since it was last polled.
///
/// The inner future is always polled the first time. Polling a `Gated` when
/// the inner future has not woken it returns `Pending` without touching the
/// inner future, whose last registered wake-up stays in force.
pub struct Gated<F> {
    inner: F,
    /// The waker handed to the inner future.
    signal: Arc<Signal>,
    waker: Waker,
    /// The task's waker at the inner future's last poll; `None` before it.
    task: Option<Waker>,
}

struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The flag first: the task, once woken, must see it.
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> Gated<F> {
    /// Gates `inner`.
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Gated {
            inner,
            waker: Waker::from(signal.clone()),
            signal,
            task: None,
        }
    }

    /// The inner future, for changing it (as resetting a timer).
    ///
    /// The next poll polls it, so that it registers its wake-up afresh.
    pub fn get_mut(&mut self) -> &mut F {
        self.task = None;
        &mut self.inner
    }

    /// The inner future.
    pub fn get_ref(&self) -> &F {
        &self.inner
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let same_task = this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker()));
        if same_task && !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        if !same_task {
            this.task = Some(cx.waker().clone());
            this.signal.woken.store(false, Ordering::Release);
        }
        this.signal.task.register(cx.waker());
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, waking through the waker
    /// it was last given.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_after_it_woke_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut gated = Gated::new(Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: inner_waker.clone(),
        });
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&task);

        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the first poll reaches the inner future"
        );
        for _ in 0..5 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "polls without a wake are skipped"
        );

        ready.store(true, Ordering::SeqCst);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "the inner wake reaches the task"
        );
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_new_task_waker_or_a_change_polls_the_inner_future() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut gated = Gated::new(Probe {
            polls: polls.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(std::sync::Mutex::new(None)),
        });
        let first = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let second = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        assert!(Pin::new(&mut gated)
            .poll(&mut Context::from_waker(&first))
            .is_pending());
        assert!(Pin::new(&mut gated)
            .poll(&mut Context::from_waker(&second))
            .is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "another task's waker is registered"
        );
        gated.get_mut().polls.fetch_add(0, Ordering::SeqCst);
        assert!(Pin::new(&mut gated)
            .poll(&mut Context::from_waker(&second))
            .is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            3,
            "a changed future registers afresh"
        );
        assert!(Pin::new(&mut gated)
            .poll(&mut Context::from_waker(&second))
            .is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_timer_fires_and_can_be_reset() {
        let mut sleep = Gated::new(Box::pin(tokio::time::sleep(Duration::from_secs(10))));
        let start = tokio::time::Instant::now();
        (&mut sleep).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        let next = tokio::time::Instant::now() + Duration::from_secs(5);
        sleep.get_mut().as_mut().reset(next);
        // Other wakes of the task do not make it fire early.
        tokio::select! {
            () = &mut sleep => panic!("fired early"),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        (&mut sleep).await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
    }
}
