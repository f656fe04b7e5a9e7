//! A request body that can be sent again from its start: the frames it has
//! given out are kept (the data shared, not copied) up to [`REPLAY_LIMIT`]
//! bytes, so that a request the API server turned away unprocessed goes
//! again whole, what was already sent followed by what the caller has not
//! sent yet.
//!
//! The frames are kept until the answer's head comes. When the server
//! answers before it has read the whole body (kube's 401 or 403), the rest
//! is still copied, and kept up to the limit, until the copy ends.
//!
//! All requests together keep at most [`REPLAY_BUDGET`] bytes, so callers
//! holding many slow uploads open cannot make the proxy hold more: a request
//! whose next frame does not fit in what is left stops keeping, and cannot
//! be sent again.

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

/// The most body bytes all requests of the process keep together.
pub const REPLAY_BUDGET: usize = 64 * 1024 * 1024;

/// Bytes kept, against a limit shared by the requests that use it.
pub(crate) struct Budget {
    kept: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) const fn new(limit: usize) -> Self {
        Budget {
            kept: AtomicUsize::new(0),
            limit,
        }
    }

    /// Takes `bytes` from the budget; false (and nothing taken) when they do
    /// not fit.
    fn take(&self, bytes: usize) -> bool {
        let before = self.kept.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.limit {
            self.kept.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.kept.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

/// The budget of every request the proxy forwards.
static BUDGET: Budget = Budget::new(REPLAY_BUDGET);

/// A body whose frames given out so far can be given out again
/// ([`Replay::rewind`]).
pub(crate) struct Replay<B> {
    inner: B,
    /// Frames to give out again before the next of `inner`.
    again: VecDeque<Frame<Bytes>>,
    /// The frames given out since the start, while they fit in
    /// [`REPLAY_LIMIT`] and the budget; `None` once they did not, or when
    /// not kept.
    kept: Option<Vec<Frame<Bytes>>>,
    /// The data bytes in `kept`, taken from `budget`.
    kept_bytes: usize,
    budget: &'static Budget,
}

impl<B> Replay<B> {
    /// `body`, its frames kept as they are given out.
    pub(crate) fn new(body: B) -> Self {
        Self::with_budget(body, &BUDGET)
    }

    /// `body`, its frames kept within `budget`.
    pub(crate) fn with_budget(body: B, budget: &'static Budget) -> Self {
        Replay {
            inner: body,
            again: VecDeque::new(),
            kept: Some(Vec::new()),
            kept_bytes: 0,
            budget,
        }
    }

    /// Stops keeping frames (the request will not be sent again) and drops
    /// those kept.
    pub(crate) fn forget(&mut self) {
        self.kept = None;
        self.budget.give_back(std::mem::take(&mut self.kept_bytes));
    }

    /// Starts the body again from its first frame; false when its frames
    /// were not all kept, and it cannot be.
    pub(crate) fn rewind(&mut self) -> bool {
        let Some(kept) = self.kept.as_mut() else {
            return false;
        };
        // Frames given out again are kept again as they go.
        for frame in kept.drain(..).rev() {
            self.again.push_front(frame);
        }
        self.budget.give_back(std::mem::take(&mut self.kept_bytes));
        true
    }

    fn keep(&mut self, frame: &Frame<Bytes>) {
        let Some(kept) = self.kept.as_mut() else {
            return;
        };
        let copy = if let Some(data) = frame.data_ref() {
            if self.kept_bytes + data.len() > REPLAY_LIMIT || !self.budget.take(data.len()) {
                self.forget();
                return;
            }
            self.kept_bytes += data.len();
            Frame::data(data.clone())
        } else if let Some(trailers) = frame.trailers_ref() {
            Frame::trailers(trailers.clone())
        } else {
            return;
        };
        kept.push(copy);
    }
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        self.budget.give_back(self.kept_bytes);
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
            Some(frame) => Some(Ok(frame)),
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
        let mut frames: Vec<_> = chunks
            .iter()
            .map(|&n| Ok(Frame::data(Bytes::from(vec![b'x'; n]))))
            .collect();
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
        // Rewound again halfway through the frames given out again.
        assert_eq!(take(&mut replay, 1).await, ["3"]);
        assert!(replay.rewind());
        assert_eq!(take(&mut replay, 5).await, ["3", "5", "7", "done", "end"]);
        assert!(replay.rewind());
        assert_eq!(take(&mut replay, 5).await, ["3", "5", "7", "done", "end"]);
    }

    /// Requests keep within their shared budget, and give back what they
    /// kept when they are rewound, forgotten or dropped.
    #[tokio::test]
    async fn requests_keep_within_the_shared_budget() {
        static SHARED: Budget = Budget::new(10);
        let mut first = Replay::with_budget(body(&[6], false), &SHARED);
        let mut second = Replay::with_budget(body(&[5], false), &SHARED);
        let mut third = Replay::with_budget(body(&[4], false), &SHARED);
        assert_eq!(take(&mut first, 1).await, ["6"]);
        assert_eq!(take(&mut second, 1).await, ["5"]);
        assert!(!second.rewind(), "5 more do not fit in 10 with 6 kept");
        assert_eq!(take(&mut third, 1).await, ["4"]);
        assert!(third.rewind(), "4 more fit");
        assert_eq!(SHARED.kept.load(Ordering::Relaxed), 6);
        drop(first);
        assert_eq!(take(&mut third, 1).await, ["4"]);
        assert_eq!(SHARED.kept.load(Ordering::Relaxed), 4);
        third.forget();
        assert_eq!(SHARED.kept.load(Ordering::Relaxed), 0);
        drop((second, third));
        assert_eq!(SHARED.kept.load(Ordering::Relaxed), 0);
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
