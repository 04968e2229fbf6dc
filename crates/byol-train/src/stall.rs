//! The stall watch of a data-parallel run (`train.stall_timeout_s`).
//!
//! Several peers, or several machines, wait for each other in every
//! all-reduce, and burn-collective 0.21 has no timeout: a peer stuck in a
//! step (a hung device, a deadlock in the collective) holds every other
//! peer in its all-reduce for ever, while the process lives and its
//! heartbeats go on. [`Progress`] ends such a run instead: when no step
//! has finished for the timeout (or for 20 times the slowest step so far,
//! whichever is longer), it logs an error and exits the process with
//! [`EXIT_STALLED`]. The newest checkpoint is whole (checkpoints are
//! written whole or not at all), so `--resume` continues from it.
//!
//! What the run does between steps (the kNN monitor, a checkpoint) is
//! [`Progress::busy`], which the watch waits out; with several machines
//! node 0 says so on its heartbeats, since the other nodes wait for it in
//! their next all-reduce meanwhile ([`Progress::touch`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Exit status of a process whose run stopped making progress.
pub const EXIT_STALLED: i32 = 72;

/// How many times the slowest step so far the watch waits at least.
const SLOWEST_STEPS: u32 = 20;

/// How a data-parallel run is getting on; clones share one state.
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    timeout: Duration,
    /// When the last step (or busy stretch) ended, and the slowest step.
    clock: Mutex<(Instant, Duration)>,
    busy: AtomicUsize,
    ended: AtomicBool,
}

/// While held, the run is busy between steps: the watch waits.
#[must_use = "the run is busy only while the guard lives"]
pub struct Busy<'a>(&'a Progress);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inner.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Progress {
    /// A watch of `timeout` (zero: none), its clock started now.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                timeout,
                clock: Mutex::new((Instant::now(), Duration::ZERO)),
                busy: AtomicUsize::new(0),
                ended: AtomicBool::new(false),
            }),
        }
    }

    fn clock(&self) -> MutexGuard<'_, (Instant, Duration)> {
        self.inner
            .clock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A step has finished now.
    pub fn stepped(&self) {
        let mut clock = self.clock();
        let now = Instant::now();
        clock.1 = clock.1.max(now.duration_since(clock.0));
        clock.0 = now;
    }

    /// Something else moved the run on (node 0 is busy): the clock
    /// restarts, without counting a step.
    pub fn touch(&self) {
        self.clock().0 = Instant::now();
    }

    /// The run is busy between steps until the guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.inner.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    /// Whether the run is busy between steps.
    pub fn is_busy(&self) -> bool {
        self.inner.busy.load(Ordering::SeqCst) > 0
    }

    /// The run has ended: the watch stops.
    pub fn end(&self) {
        self.inner.ended.store(true, Ordering::SeqCst);
    }

    /// How long the watch waits now: the timeout, or 20 times the
    /// slowest step, whichever is longer.
    pub fn limit(&self) -> Duration {
        self.inner.timeout.max(self.clock().1 * SLOWEST_STEPS)
    }

    /// How long no step has finished at `now`, when that is past
    /// [`Progress::limit`] and the run is not busy.
    pub fn overdue(&self, now: Instant) -> Option<Duration> {
        if self.inner.timeout.is_zero() || self.is_busy() {
            return None;
        }
        let since = now.saturating_duration_since(self.clock().0);
        (since > self.limit()).then_some(since)
    }

    /// Starts the watch on a thread of its own: once [`Progress::overdue`],
    /// `tell_others` gets the message (another machine's run is told),
    /// then the process logs it and exits with [`EXIT_STALLED`]. Nothing
    /// with a zero timeout.
    pub fn watch(&self, what: String, tell_others: impl FnOnce(&str) + Send + 'static) {
        if self.inner.timeout.is_zero() {
            return;
        }
        let progress = self.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                if progress.inner.ended.load(Ordering::SeqCst) {
                    return;
                }
                let Some(since) = progress.overdue(Instant::now()) else {
                    continue;
                };
                let message = format!(
                    "{what}: no step has finished for {:.0} s (train.stall_timeout_s = {} s, or \
                     {SLOWEST_STEPS} × the slowest step so far, {:.1} s, whichever is longer): a \
                     peer or a machine is stuck (a hung device, or the collective). Exiting with \
                     status {EXIT_STALLED}; the newest checkpoint is intact, --resume continues \
                     from it (raise train.stall_timeout_s if steps are this slow)",
                    since.as_secs_f64(),
                    progress.inner.timeout.as_secs_f64(),
                    progress.clock().1.as_secs_f64(),
                );
                tell_others(&message);
                tracing::error!("{message}");
                eprintln!("error: {message}");
                std::process::exit(EXIT_STALLED);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_overdue_once_no_step_finished_for_the_timeout_unless_busy() {
        let progress = Progress::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(progress.overdue(start + Duration::from_secs(5)), None);
        let late = progress.overdue(start + Duration::from_secs(11));
        assert!(
            late.is_some_and(|d| d >= Duration::from_secs(10)),
            "{late:?}"
        );
        {
            let _busy = progress.busy();
            assert!(progress.is_busy());
            assert_eq!(progress.overdue(start + Duration::from_secs(11)), None);
        }
        // the busy stretch restarts the clock
        assert!(!progress.is_busy());
        assert_eq!(
            progress.overdue(Instant::now() + Duration::from_secs(9)),
            None
        );
        assert!(
            progress
                .overdue(Instant::now() + Duration::from_secs(11))
                .is_some()
        );
        progress.touch();
        assert_eq!(
            progress.overdue(Instant::now() + Duration::from_secs(9)),
            None
        );
    }

    #[test]
    fn the_limit_grows_to_twenty_slowest_steps_and_zero_is_off() {
        let progress = Progress::new(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(30));
        progress.stepped();
        let limit = progress.limit();
        assert!(limit >= Duration::from_millis(600), "{limit:?}");
        assert_eq!(progress.overdue(Instant::now() + limit / 2), None);
        assert!(
            progress
                .overdue(Instant::now() + limit + Duration::from_millis(50))
                .is_some()
        );
        let off = Progress::new(Duration::ZERO);
        assert_eq!(
            off.overdue(Instant::now() + Duration::from_secs(3600)),
            None
        );
    }
}
