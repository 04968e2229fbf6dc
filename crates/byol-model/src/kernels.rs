//! Which path each of our special operations takes on a backend: our own
//! kernels for burn's Flex CPU backend ([`crate::fast_conv`], the
//! BatchNorm of `fast_norm`) or burn's generic operations. [`paths`] is
//! the one place that decides; the convolution and BatchNorm code ask it,
//! and a run logs its answer once ([`log_paths`]).
//!
//! **Why `TypeId`, not a trait bound.** The choice depends on the concrete
//! backend, but every model, the training loop and the binary's backend
//! dispatch are generic over `B: Backend`, a trait of burn's. A bound such
//! as `B: OurKernels` would have to be implemented for every backend burn
//! ships (foreign types: only through a wrapper) and would spread to every
//! generic signature down to a user's own encoder, and stable Rust has no
//! specialisation to pick an implementation for Flex alone. Comparing
//! `TypeId`s at run time (then a checked downcast) keeps the signatures
//! `B: Backend` and costs one comparison per call; a backend it does not
//! recognise — CUDA, wgpu, NdArray, a new one — simply gets burn's path,
//! which is always correct. The reference path stays callable directly
//! (burn's `conv2d`, `BatchNorm`) and the tests compare the two.

use burn::prelude::Backend;

/// Where an operation is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// Our kernels for Flex (this crate's `fast_conv` / `fast_norm`).
    Ours,
    /// burn's generic operations (the path CUDA and wgpu take).
    Burn,
}

/// The path of each special operation on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPaths {
    /// Forward convolution (no groups, no dilation).
    pub conv_forward: KernelPath,
    /// The convolution's weight and input gradients.
    pub conv_backward: KernelPath,
    /// BatchNorm with batch statistics, forward and backward (training).
    pub batch_norm_train: KernelPath,
    /// Convolution in bf16 ([`crate::Precision::Bf16`]): ours rounds its
    /// operands and result to bf16 around our f32 kernels (Flex's own bf16
    /// convolution converts to f32 as well); burn's casts to bf16 tensors.
    pub conv_bf16: KernelPath,
}

/// The paths on `B`: ours on `Flex` (forward) and `Autodiff<Flex>`
/// (forward and backward) when the `flex` feature is on, burn's elsewhere.
pub fn paths<B: Backend>() -> KernelPaths {
    let (flex, flex_autodiff) = flex_types::<B>();
    let ours = |yes: bool| {
        if yes {
            KernelPath::Ours
        } else {
            KernelPath::Burn
        }
    };
    KernelPaths {
        conv_forward: ours(flex || flex_autodiff),
        conv_backward: ours(flex_autodiff),
        batch_norm_train: ours(flex_autodiff),
        conv_bf16: ours(flex || flex_autodiff),
    }
}

/// Logs [`paths`] of `B` at info level; a run calls it once at its start.
pub fn log_paths<B: Backend>() {
    let p = paths::<B>();
    tracing::info!(
        backend = std::any::type_name::<B>(),
        conv_forward = ?p.conv_forward,
        conv_backward = ?p.conv_backward,
        batch_norm_train = ?p.batch_norm_train,
        conv_bf16 = ?p.conv_bf16,
        "kernel paths"
    );
}

/// (`B` is `Flex`, `B` is `Autodiff<Flex>`); without the `flex` feature
/// neither can be.
#[cfg_attr(not(feature = "flex"), allow(clippy::extra_unused_type_parameters))]
fn flex_types<B: Backend>() -> (bool, bool) {
    #[cfg(feature = "flex")]
    {
        use burn::backend::{Autodiff, Flex};
        use std::any::TypeId;
        let b = TypeId::of::<B>();
        (
            b == TypeId::of::<Flex>(),
            b == TypeId::of::<Autodiff<Flex>>(),
        )
    }
    #[cfg(not(feature = "flex"))]
    {
        (false, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, NdArray};

    #[test]
    fn only_flex_takes_our_kernels_and_only_its_autodiff_our_gradients() {
        let ad = paths::<Autodiff<Flex>>();
        assert_eq!(
            ad,
            KernelPaths {
                conv_forward: KernelPath::Ours,
                conv_backward: KernelPath::Ours,
                batch_norm_train: KernelPath::Ours,
                conv_bf16: KernelPath::Ours,
            }
        );
        let inner = paths::<Flex>();
        assert_eq!(inner.conv_forward, KernelPath::Ours);
        assert_eq!(inner.conv_backward, KernelPath::Burn);
        assert_eq!(inner.batch_norm_train, KernelPath::Burn);
        let other = paths::<Autodiff<NdArray>>();
        assert_eq!(other.conv_forward, KernelPath::Burn);
        assert_eq!(other.batch_norm_train, KernelPath::Burn);
        assert_eq!(other.conv_bf16, KernelPath::Burn);
    }
}
