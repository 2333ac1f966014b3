//! The response body type and the access-log wrapper that counts what was
//! actually sent and writes the request's one log line when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::telemetry::{AccessRecord, Metrics};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pin_project_lite::pin_project! {
    /// Counts body bytes; on drop, emits the access-log line with the byte
    /// count and whether the body completed or was aborted.
    pub struct Logged {
        #[pin]
        inner: ResponseBody,
        record: AccessRecord,
        metrics: Arc<Metrics>,
        started: Instant,
        bytes: u64,
        failed: bool,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let complete = !*this.failed && this.inner.is_end_stream();
            this.record.emit(this.metrics, *this.bytes, complete, this.started.elapsed());
        }
    }
}

impl Logged {
    pub fn new(inner: ResponseBody, record: AccessRecord, metrics: Arc<Metrics>, started: Instant) -> Logged {
        Logged {
            inner,
            record,
            metrics,
            started,
            bytes: 0,
            failed: false,
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                *this.failed = true;
                this.record.error = Some(e.to_string());
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
