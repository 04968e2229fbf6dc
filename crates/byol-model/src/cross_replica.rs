//! Cross-replica BatchNorm: statistics over the whole global batch when
//! several data-parallel replicas each hold a shard of it.
//!
//! The BYOL paper's TPU implementation aggregates BatchNorm statistics over
//! all its devices, as lightly's `sync_batchnorm=True` and PyTorch's
//! `SyncBatchNorm` do. Here the layers of this crate
//! ([`crate::batch_norm`], hence the ResNets and the heads) compute their
//! batch statistics as sums, and hand each per-channel sum to the
//! [`CrossReplica`] that the calling thread has installed; it returns the
//! sum over every replica. The sum has to be differentiable, its backward
//! again a sum over the replicas of the incoming gradients (the stats of a
//! shard reach every replica's loss), which is what the trainer's
//! all-reduce on burn's collective provides. This crate only asks for the
//! function: it knows nothing of peers or collectives.
//!
//! The function is per thread (each data-parallel peer is a thread that
//! runs its own forward and backward) and per backend type (a layer on
//! another backend, such as an evaluation on the inner backend, normalises
//! as usual).

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;

use burn::prelude::*;

/// The sum over every replica of a per-channel vector.
pub type ReplicaSum<B> = Arc<dyn Fn(Tensor<B, 1>) -> Tensor<B, 1> + Send + Sync>;

/// How the BatchNorm layers of a thread reach the other replicas.
pub struct CrossReplica<B: Backend> {
    /// Sums a `[channels]` vector over the replicas, differentiably.
    pub sum: ReplicaSum<B>,
    /// Replicas, every one holding a shard of the same size (the global
    /// batch is `replicas ×` a shard).
    pub replicas: usize,
}

impl<B: Backend> Clone for CrossReplica<B> {
    fn clone(&self) -> Self {
        Self {
            sum: Arc::clone(&self.sum),
            replicas: self.replicas,
        }
    }
}

impl<B: Backend> std::fmt::Debug for CrossReplica<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossReplica")
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

thread_local! {
    static INSTALLED: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Puts the previous function back when the scope ends, on a panic too.
struct Restore(Option<Box<dyn Any>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        INSTALLED.with(|slot| *slot.borrow_mut() = previous);
    }
}

/// Runs `f` with every BatchNorm layer of this crate on backend `B`, on
/// this thread, normalising with statistics summed over the replicas by
/// `cross`. Forward and backward of a step both belong inside.
pub fn with_cross_replica<B: Backend, R>(cross: CrossReplica<B>, f: impl FnOnce() -> R) -> R {
    let previous = INSTALLED.with(|slot| slot.borrow_mut().replace(Box::new(cross)));
    let _restore = Restore(previous);
    f()
}

/// The function installed on this thread for backend `B`, if any.
pub(crate) fn installed<B: Backend>() -> Option<CrossReplica<B>> {
    INSTALLED.with(|slot| {
        slot.borrow()
            .as_ref()
            .and_then(|any| any.downcast_ref::<CrossReplica<B>>())
            .cloned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type A = Autodiff<Flex>;

    fn doubling() -> CrossReplica<A> {
        CrossReplica {
            sum: Arc::new(|t: Tensor<A, 1>| t.mul_scalar(2.0)),
            replicas: 2,
        }
    }

    #[test]
    fn installed_only_inside_the_scope_and_only_for_its_backend() {
        assert!(installed::<A>().is_none());
        with_cross_replica(doubling(), || {
            assert_eq!(installed::<A>().map(|c| c.replicas), Some(2));
            // the inner backend normalises as usual
            assert!(installed::<Flex>().is_none());
            // and other threads too
            std::thread::scope(|s| {
                s.spawn(|| assert!(installed::<A>().is_none()));
            });
        });
        assert!(installed::<A>().is_none());
    }

    #[test]
    fn a_panic_inside_the_scope_uninstalls_it() {
        let caught = std::panic::catch_unwind(|| {
            with_cross_replica(doubling(), || panic!("inside"));
        });
        assert!(caught.is_err());
        assert!(installed::<A>().is_none());
    }
}
