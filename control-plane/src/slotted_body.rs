//! A response body that holds a send slot until the last of it is handed to the connection.
//! A full key map runs to hundreds of megabytes at a million keys: writing fifty at once
//! would keep the server's two workers copying them, and the small answers filters poll for
//! (304s and deltas) would queue behind. With a few slots, full maps wait their turn instead.

use axum::body::Bytes;
use http_body::{Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;

/// Handed to the connection a piece at a time, so that it asks for the next piece (and the
/// slot stays taken) only once most of the last one is written.
const PIECE: usize = 256 * 1024;

pub struct SlottedBody {
    rest: Bytes,
    _slot: OwnedSemaphorePermit,
}

impl SlottedBody {
    pub fn new(body: Bytes, slot: OwnedSemaphorePermit) -> SlottedBody {
        SlottedBody {
            rest: body,
            _slot: slot,
        }
    }
}

impl http_body::Body for SlottedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(PIECE);
        let piece = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    #[test]
    fn the_slot_is_held_until_the_last_piece_is_taken() {
        let slots = Arc::new(Semaphore::new(1));
        let slot = Arc::clone(&slots).try_acquire_owned().expect("slot");
        let body = Bytes::from(vec![7u8; PIECE * 2 + 10]);
        let mut slotted = SlottedBody::new(body.clone(), slot);
        assert_eq!(slotted.size_hint().exact(), Some(body.len() as u64));
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        let waker = std::task::Waker::from(Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        let mut sent = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut slotted).poll_frame(&mut cx) {
            assert_eq!(slots.available_permits(), 0, "taken while pieces remain");
            sent.extend_from_slice(&frame.into_data().expect("data"));
        }
        assert_eq!(sent, body);
        assert!(slotted.is_end_stream());
        drop(slotted);
        assert_eq!(slots.available_permits(), 1);
    }
}
