//! [`Woken`]: a future polled only once its own waker has fired.
//!
//! A connection's task waits on the connection itself beside two watchers (the server's drain
//! and the progress tracker), and every wake-up of the task — several per request, almost all
//! for the connection — used to poll all three. The watchers' futures (a timer, a `Notify`, a
//! cancellation token) cost more to poll than anything they had to say; behind `Woken` they
//! are polled only when something they wait for happened.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pin_project_lite::pin_project! {
    /// `F`, polled on the first poll and after each wake-up of its own.
    pub(super) struct Woken<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
    }
}

/// The waker `F` is given: notes the wake-up, then wakes the task that polled last.
struct Signal {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.lock_task().as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Signal {
    fn lock_task(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        // Nothing panics while holding it; a poisoned lock still holds a valid waker.
        self.task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<F: Future> Woken<F> {
    pub(super) fn new(inner: F) -> Self {
        Self {
            inner,
            signal: Arc::new(Signal {
                woken: AtomicBool::new(true),
                task: Mutex::new(None),
            }),
        }
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        {
            let mut task = this.signal.lock_task();
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        // Taken before polling: a wake-up during the poll is kept for the next one.
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(this.signal));
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, waking through the last waker it was given.
    struct Probe {
        polls: Arc<AtomicUsize>,
        waker: Arc<Mutex<Option<Waker>>>,
        ready: Arc<AtomicBool>,
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

    #[test]
    fn polled_first_then_only_after_its_own_wake_up() {
        let polls = Arc::new(AtomicUsize::new(0));
        let inner_waker = Arc::new(Mutex::new(None::<Waker>));
        let ready = Arc::new(AtomicBool::new(false));
        let mut woken = Box::pin(Woken::new(Probe {
            polls: Arc::clone(&polls),
            waker: Arc::clone(&inner_waker),
            ready: Arc::clone(&ready),
        }));
        let task_wakes = Arc::new(Counter(AtomicUsize::new(0)));
        let task = Waker::from(Arc::clone(&task_wakes));
        let mut cx = Context::from_waker(&task);

        assert!(woken.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // The task woken for something else: the inner future is not polled.
        for _ in 0..5 {
            assert!(woken.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its own wake-up wakes the task and lets the next poll through.
        ready.store(true, Ordering::SeqCst);
        let inner = inner_waker.lock().unwrap().take().unwrap();
        inner.wake();
        assert_eq!(task_wakes.0.load(Ordering::SeqCst), 1);
        assert!(woken.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
