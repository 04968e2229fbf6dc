//! Reproducible initial weights when several models are initialised in one
//! process.
//!
//! burn draws initial weights from one random-number generator per backend
//! and process (`Backend::seed` reseeds it), and it initialises parameters
//! lazily, at their first use. So two models initialised at the same time
//! (two runs in threads, tests running in parallel) interleave their draws,
//! and a parameter first used later draws whatever the generator holds by
//! then: the weights depend on what else the process did. Seeding under
//! [`seeded`], initialising, and [`materialize`]-ing every parameter before
//! the guard drops makes them depend on the seed alone — provided whatever
//! else draws from burn's generator in the process takes the guard too.

use std::sync::{Mutex, MutexGuard, PoisonError};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

static GENERATOR: Mutex<()> = Mutex::new(());

/// Takes burn's random-number generator of `B` for the caller and seeds it
/// with `seed`; other callers wait until the guard drops.
pub fn seeded<B: Backend>(device: &B::Device, seed: u64) -> MutexGuard<'static, ()> {
    // a panic while another caller held it leaves nothing to repair: the
    // next caller reseeds
    let guard = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
    B::seed(device, seed);
    guard
}

/// Initialises now every parameter of `module` that is still waiting for
/// its first use.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    module.visit(&mut Touch);
}

struct Touch;

impl<B: Backend> ModuleVisitor<B> for Touch {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        let _ = param.val();
    }
    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
        let _ = param.val();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResNetConfig;
    use burn::backend::Flex;

    // the check that concurrent seeded inits agree is tests/seeded_init.rs:
    // it needs a process where nothing else draws random numbers

    #[test]
    fn materialize_initialises_lazy_parameters_before_first_use() {
        let device = Default::default();
        let m = ResNetConfig::small().init::<Flex>(&device);
        let first = m.conv1.weight.clone();
        assert!(!first.is_initialized(), "burn initialises lazily");
        materialize(&m);
        assert!(m.conv1.weight.is_initialized());
    }
}
