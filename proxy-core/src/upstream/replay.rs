//! A request body that can be sent again from its start: what it has given
//! out is copied, up to [`REPLAY_LIMIT`] bytes, so that a request the API
//! server turned away unprocessed goes again whole, what was already sent
//! followed by what the caller has not sent yet.
//!
//! The copy is a buffer of its own, never a share of the caller's frames: a
//! frame's bytes can be a slice of a far larger read buffer, which a kept
//! share would hold alive whole. It is dropped as soon as the request cannot
//! be sent again: when the answer's head comes ([`Replay::forget`]), so an
//! upload the server answered early (kube's 401 or 403) keeps nothing while
//! the rest of it is copied or drained.
//!
//! All requests together hold at most [`REPLAY_BUDGET`] bytes of copies,
//! counted by the capacity of the buffers held, so callers holding many slow
//! uploads open cannot make the proxy hold more: a request whose next frame
//! does not fit in what is left stops keeping, and cannot be sent again.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The most body bytes one request keeps for sending again. A request whose
/// body gave out more before its answer came is not sent again: it fails as
/// before.
pub const REPLAY_LIMIT: usize = 256 * 1024;

/// The most bytes of copies all requests of the process hold together.
pub const REPLAY_BUDGET: usize = 64 * 1024 * 1024;

/// Bytes held, against a limit shared by the requests that use it.
pub(crate) struct Budget {
    held: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) const fn new(limit: usize) -> Self {
        Budget {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `bytes` from the budget; false (and nothing taken) when they do
    /// not fit.
    fn take(&self, bytes: usize) -> bool {
        let before = self.held.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.limit {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// The bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// The budget of every request the proxy forwards.
static BUDGET: Budget = Budget::new(REPLAY_BUDGET);

/// What a body gave out since its start (or its last rewind).
#[derive(Default)]
struct Kept {
    /// The data, copied into one buffer whose capacity is charged.
    data: Vec<u8>,
    trailers: Option<http::HeaderMap>,
}

/// A body whose frames given out so far can be given out again
/// ([`Replay::rewind`]).
pub(crate) struct Replay<B> {
    inner: B,
    /// Frames to give out again before the next of `inner`: the copy of the
    /// data as one frame, then the trailers.
    again: VecDeque<Frame<Bytes>>,
    /// What was given out since the start (or the last rewind), while it
    /// fits in [`REPLAY_LIMIT`] and the budget; `None` once it did not, or
    /// once the request cannot be sent again.
    kept: Option<Kept>,
    charges: Charges,
}

/// What a [`Replay`] took from its budget, given back when dropped.
struct Charges {
    budget: &'static Budget,
    /// The capacity of the copy waiting in `again`.
    again: usize,
    /// The capacity of `kept`'s buffer.
    kept: usize,
}

impl Drop for Charges {
    fn drop(&mut self) {
        self.budget.give_back(self.kept + self.again);
    }
}

impl<B> Replay<B> {
    /// `body`, what it gives out kept.
    pub(crate) fn new(body: B) -> Self {
        Self::with_budget(body, &BUDGET)
    }

    /// `body`, what it gives out kept within `budget`.
    pub(crate) fn with_budget(body: B, budget: &'static Budget) -> Self {
        Replay {
            inner: body,
            again: VecDeque::new(),
            kept: Some(Kept::default()),
            charges: Charges {
                budget,
                again: 0,
                kept: 0,
            },
        }
    }

    /// Stops keeping (the request will not be sent again) and drops what
    /// was kept. What waits to be given out again after a rewind is still
    /// given out.
    pub(crate) fn forget(&mut self) {
        self.kept = None;
        self.charges
            .budget
            .give_back(std::mem::take(&mut self.charges.kept));
    }

    /// The body as it was given, what was kept dropped. Frames waiting to
    /// be given out again are dropped too: after a rewind, what comes is
    /// the rest of what the caller sends.
    pub(crate) fn into_inner(self) -> B {
        self.inner
    }

    /// Starts the body again from its first frame; false when what it gave
    /// out was not all kept, and it cannot be.
    pub(crate) fn rewind(&mut self) -> bool {
        let Some(kept) = self.kept.as_mut() else {
            return false;
        };
        // What waits in `again` was not given out since the last rewind, so
        // it comes after what was: the data first, then the trailers.
        if let Some(trailers) = kept.trailers.take() {
            self.again.push_front(Frame::trailers(trailers));
        }
        if !kept.data.is_empty() {
            let data = std::mem::take(&mut kept.data);
            self.again.push_front(Frame::data(Bytes::from(data)));
            // The buffer is the same, held in `again` now.
            self.charges.again += std::mem::take(&mut self.charges.kept);
        }
        true
    }

    fn keep(&mut self, frame: &Frame<Bytes>) {
        let Some(kept) = self.kept.as_mut() else {
            return;
        };
        if let Some(trailers) = frame.trailers_ref() {
            kept.trailers = Some(trailers.clone());
            return;
        }
        let Some(data) = frame.data_ref() else {
            return;
        };
        let len = kept.data.len() + data.len();
        let capacity = kept.data.capacity();
        if len > capacity {
            // Doubled, as a `Vec` grows, but never past the limit.
            let grown = len.max(capacity.saturating_mul(2)).min(REPLAY_LIMIT);
            if len > REPLAY_LIMIT || !self.charges.budget.take(grown - capacity) {
                self.forget();
                return;
            }
            kept.data.reserve_exact(grown - kept.data.len());
            self.charges.kept += grown - capacity;
        }
        kept.data.extend_from_slice(data);
    }
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let next = match this.again.pop_front() {
            Some(frame) => {
                if frame.is_data() {
                    // Handed on; what is kept of it is a copy of its own.
                    this.charges
                        .budget
                        .give_back(std::mem::take(&mut this.charges.again));
                }
                Some(Ok(frame))
            }
            None => match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            },
        };
        if let Some(Ok(frame)) = &next {
            this.keep(frame);
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.again.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let again: u64 = self
            .again
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + again);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + again);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, StreamBody};

    type TestBody = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn body(chunks: &[usize], trailer: bool) -> TestBody {
        let data: Vec<_> = chunks.iter().map(|&n| Bytes::from(vec![b'x'; n])).collect();
        frames(data, trailer)
    }

    fn frames(data: Vec<Bytes>, trailer: bool) -> TestBody {
        let mut frames: Vec<_> = data.into_iter().map(|d| Ok(Frame::data(d))).collect();
        if trailer {
            let mut map = http::HeaderMap::new();
            map.insert("x-check", "done".parse().unwrap());
            frames.push(Ok(Frame::trailers(map)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    /// Data lengths and the trailer's value of the next `n` frames.
    async fn take(body: &mut Replay<TestBody>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let Some(frame) = body.frame().await else {
                out.push("end".into());
                break;
            };
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(data) => out.push(data.len().to_string()),
                Err(frame) => out.push(
                    frame.into_trailers().unwrap()["x-check"]
                        .to_str()
                        .unwrap()
                        .into(),
                ),
            }
        }
        out
    }

    #[tokio::test]
    async fn a_rewound_body_gives_out_what_it_sent_then_the_rest() {
        let mut replay = Replay::new(body(&[3, 5, 7], true));
        assert_eq!(take(&mut replay, 2).await, ["3", "5"]);
        assert!(replay.rewind());
        assert_eq!(replay.size_hint().lower(), 8);
        // What was given out comes again as one frame.
        assert_eq!(take(&mut replay, 2).await, ["8", "7"]);
        assert!(replay.rewind());
        assert_eq!(take(&mut replay, 3).await, ["15", "done", "end"]);
        assert!(replay.rewind());
        // Rewound again before the trailers were given out again.
        assert_eq!(take(&mut replay, 1).await, ["15"]);
        assert!(replay.rewind());
        assert_eq!(take(&mut replay, 3).await, ["15", "done", "end"]);
    }

    /// Requests keep within their shared budget, and give back what they
    /// held when they are forgotten or dropped; a rewound copy stays
    /// charged until it is given out again.
    #[tokio::test]
    async fn requests_keep_within_the_shared_budget() {
        static SHARED: Budget = Budget::new(10);
        let mut first = Replay::with_budget(body(&[6], false), &SHARED);
        let mut second = Replay::with_budget(body(&[5], false), &SHARED);
        let mut third = Replay::with_budget(body(&[4], false), &SHARED);
        assert_eq!(take(&mut first, 1).await, ["6"]);
        assert_eq!(take(&mut second, 1).await, ["5"]);
        assert!(!second.rewind(), "5 more do not fit in 10 with 6 held");
        assert_eq!(take(&mut third, 1).await, ["4"]);
        assert!(third.rewind(), "4 more fit");
        assert_eq!(SHARED.held(), 10, "the rewound copy is still held");
        drop(first);
        assert_eq!(take(&mut third, 1).await, ["4"]);
        assert_eq!(SHARED.held(), 4);
        third.forget();
        assert_eq!(SHARED.held(), 0);
        drop((second, third));
        assert_eq!(SHARED.held(), 0);
    }

    /// The copy is the body's own: frames that are slices of a larger
    /// buffer (as a connection's read buffer) do not keep that buffer
    /// alive, and the budget is charged with the capacity held, grown as a
    /// `Vec` grows.
    #[tokio::test]
    async fn the_copy_holds_no_share_of_the_callers_buffers() {
        static SHARED: Budget = Budget::new(1024 * 1024);
        let read_buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let data = vec![read_buffer.slice(0..10), read_buffer.slice(10..15)];
        let mut replay = Replay::with_budget(frames(data, false), &SHARED);
        assert_eq!(take(&mut replay, 2).await, ["10", "5"]);
        assert!(
            read_buffer.is_unique(),
            "a kept frame holds the caller's read buffer"
        );
        assert_eq!(SHARED.held(), 20, "10, then doubled to 20 for 15");
        assert!(replay.rewind());
        assert_eq!(take(&mut replay, 2).await, ["15", "end"]);
        assert_eq!(
            SHARED.held(),
            15,
            "the copy given out again is copied exactly"
        );
        drop(replay);
        assert_eq!(SHARED.held(), 0);
    }

    /// The end is the inner body's end once nothing is left to give again.
    #[tokio::test]
    async fn a_rewound_body_has_not_ended() {
        let mut replay = Replay::new(http_body_util::Full::new(Bytes::from_static(b"abc")));
        let first = replay.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "abc");
        assert!(replay.is_end_stream());
        assert!(replay.rewind());
        assert!(!replay.is_end_stream());
        assert_eq!(replay.size_hint().exact(), Some(3));
        let again = replay.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(again, "abc");
        assert!(replay.is_end_stream());
        assert!(replay.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_or_forgotten_cannot_be_rewound() {
        let mut replay = Replay::new(body(&[REPLAY_LIMIT, 1], false));
        assert_eq!(take(&mut replay, 1).await, [REPLAY_LIMIT.to_string()]);
        assert!(replay.rewind(), "exactly at the limit");
        assert_eq!(
            take(&mut replay, 2).await,
            [REPLAY_LIMIT.to_string(), "1".into()]
        );
        assert!(!replay.rewind(), "one byte past the limit");
        assert_eq!(take(&mut replay, 1).await, ["end"]);

        let mut replay = Replay::new(body(&[4], false));
        replay.forget();
        assert_eq!(take(&mut replay, 1).await, ["4"]);
        assert!(!replay.rewind());
    }
}
