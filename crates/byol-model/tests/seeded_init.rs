//! Models initialised at the same time in several threads, each under
//! `byol_model::seeded`, get the weights of their seed. Alone in its test
//! binary: any test beside it drawing from burn's generator without the
//! guard would change the draws.

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use byol_model::{ResNet, ResNetConfig, materialize, seeded};

fn weights(m: &ResNet<Flex>) -> Vec<f32> {
    struct Flat(Vec<f32>);
    impl ModuleVisitor<Flex> for Flat {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
            self.0
                .extend(p.val().into_data().to_vec::<f32>().expect("f32"));
        }
    }
    let mut f = Flat(Vec::new());
    m.visit(&mut f);
    f.0
}

fn init(seed: u64) -> Vec<f32> {
    let device = Default::default();
    let _guard = seeded::<Flex>(&device, seed);
    let m = ResNetConfig::small().init::<Flex>(&device);
    materialize(&m);
    weights(&m)
}

#[test]
fn models_initialised_at_once_in_threads_get_their_seeds_weights() {
    let alone = init(7);
    assert_ne!(alone, init(8), "the seed matters");
    for round in 0..3 {
        let all: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| init(7))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .collect()
        });
        for w in all {
            assert!(
                w == alone,
                "round {round}: a concurrent init drew other weights"
            );
        }
    }
}
