//! The one place that picks the instruction set of the pixel loops.
//!
//! The views' loops are plain Rust written so that the compiler vectorises
//! them (whole rows, no dependence between lanes). Built for the x86-64
//! baseline, that means SSE2; [`dispatch`] runs a [`Kernel`] compiled again
//! with AVX2 + FMA or AVX-512 where the CPU has them (pulp's run-time
//! detection; no `unsafe` here). The arithmetic is the same on every path:
//! no fused multiply-add is formed (Rust never contracts `a * b + c`), so
//! results are bitwise equal whatever the CPU.

/// A loop to compile once per instruction set: `run` should be
/// `#[inline(always)]` and call only `#[inline(always)]` or generic code
/// for its hot loops, so that they are compiled into each copy.
pub(crate) trait Kernel {
    /// What the loop returns.
    type Output;
    /// The loop.
    fn run(self) -> Self::Output;
}

struct Op<K>(K);

impl<K: Kernel> pulp::WithSimd for Op<K> {
    type Output = K::Output;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> K::Output {
        self.0.run()
    }
}

/// Runs `kernel` in the copy compiled for the widest instruction set this
/// CPU has.
pub(crate) fn dispatch<K: Kernel>(kernel: K) -> K::Output {
    pulp::Arch::new().dispatch(Op(kernel))
}
