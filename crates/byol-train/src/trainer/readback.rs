//! The training loop's reads of device tensors back to the host, in one
//! place. On a GPU each read waits for the device to finish the work queued
//! before it, so the loop reads only at log intervals, epoch ends and
//! checkpoints, never inside a step; the reads are counted per thread, and
//! a test checks that a step makes none (`reads_in_steps`).

use std::cell::Cell;

use burn::prelude::*;

use crate::TrainError;

/// At most this many rows of a batch feed the collapse monitors at a log
/// interval (z-std, variance, effective rank): their read-back and the
/// effective rank's O(m³) eigen-solve stay bounded at any batch size (at
/// batch 4096 the whole batch would mean a 2048 × 2048 solve). The
/// default recipes' batches (64, 128, 256) are whole.
pub(crate) const MONITOR_ROWS: usize = 256;

thread_local! {
    static READS: Cell<usize> = const { Cell::new(0) };
    static IN_STEP: Cell<bool> = const { Cell::new(false) };
    static READS_IN_STEPS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    READS.with(|r| r.set(r.get() + 1));
    if IN_STEP.with(Cell::get) {
        READS_IN_STEPS.with(|r| r.set(r.get() + 1));
    }
}

/// A one-element tensor's value.
pub(crate) fn scalar<B: Backend>(tensor: Tensor<B, 1>) -> f32 {
    count();
    tensor.into_scalar().elem()
}

/// The first [`MONITOR_ROWS`] rows of a `[rows, dim]` tensor, row-major.
///
/// # Errors
///
/// [`TrainError::ReadBack`] naming `what`.
pub(crate) fn monitor_rows<B: Backend>(
    tensor: Tensor<B, 2>,
    what: &'static str,
) -> Result<Vec<f32>, TrainError> {
    count();
    let [rows, _] = tensor.dims();
    tensor
        .narrow(0, 0, rows.min(MONITOR_ROWS))
        .into_data()
        .to_vec()
        .map_err(|e| TrainError::ReadBack {
            what,
            message: format!("{e:?}"),
        })
}

/// Marks the current thread as inside a step while it lives: reads made
/// then count in [`reads_in_steps`].
pub(crate) struct InStep;

impl InStep {
    pub(crate) fn enter() -> Self {
        IN_STEP.with(|s| s.set(true));
        Self
    }
}

impl Drop for InStep {
    fn drop(&mut self) {
        IN_STEP.with(|s| s.set(false));
    }
}

/// Reads this thread made (all, and those inside steps).
#[cfg(test)]
pub(crate) fn counts() -> (usize, usize) {
    (READS.with(Cell::get), READS_IN_STEPS.with(Cell::get))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn reads_are_counted_and_those_in_a_step_apart() {
        let device = Default::default();
        let t = Tensor::<Flex, 1>::from_floats([2.5], &device);
        let (all0, in0) = counts();
        assert_eq!(scalar(t.clone()), 2.5);
        {
            let _step = InStep::enter();
            scalar(t);
        }
        let rows = Tensor::<Flex, 2>::zeros([MONITOR_ROWS + 10, 3], &device);
        assert_eq!(
            monitor_rows(rows, "rows").expect("read").len(),
            MONITOR_ROWS * 3
        );
        assert_eq!(counts(), (all0 + 3, in0 + 1));
    }

    /// The loop's files read device tensors only through this module: a
    /// new `into_scalar`/`into_data` there would be a read nobody counts.
    #[test]
    fn the_loop_reads_only_through_this_module() {
        let sources = [
            ("session.rs", include_str!("session.rs")),
            ("online.rs", include_str!("online.rs")),
            ("mod.rs", include_str!("mod.rs")),
            ("peers.rs", include_str!("peers.rs")),
            ("../step.rs", include_str!("../step.rs")),
            ("../parallel.rs", include_str!("../parallel.rs")),
        ];
        for (name, source) in sources {
            let code = source.split("#[cfg(test)]").next().unwrap_or(source);
            for call in ["into_scalar(", "into_data(", "to_data(", "into_vec("] {
                assert!(
                    !code.contains(call),
                    "{name} calls {call} outside its tests: read through trainer/readback.rs"
                );
            }
        }
    }
}
