//! The BYOL objective.

use burn::prelude::*;

/// ℓ(p, z) = ‖p̄ − z̄‖² = 2 − 2·⟨p, z⟩ / (‖p‖·‖z‖), per row.
///
/// "we define the following mean squared error between the normalized
/// predictions and target projections" [BYOL, Grill et al. 2020,
/// arXiv:2006.07733, eq. 2]. Values lie in [0, 4].
///
/// # Shapes
/// `p`, `z`: `[batch, dim]` → `[batch]`
///
/// # Panics
///
/// When `p` and `z` differ in shape.
pub fn regression_loss<B: Backend>(p: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 1> {
    assert_eq!(
        p.dims(),
        z.dims(),
        "prediction and projection should have the same shape"
    );
    let [batch, _] = p.dims();
    let eps = 1e-12;
    let p_norm = p.clone().square().sum_dim(1).sqrt().clamp_min(eps);
    let z_norm = z.clone().square().sum_dim(1).sqrt().clamp_min(eps);
    let cos = (p * z).sum_dim(1) / (p_norm * z_norm);
    cos.mul_scalar(-2.0).add_scalar(2.0).reshape([batch])
}

/// The symmetric BYOL loss ℓ(p₁, sg(z₂)) + ℓ(p₂, sg(z₁)), each term
/// averaged over the batch; values lie in [0, 8].
///
/// "we symmetrize the loss L_θ,ξ in Eq. 2 by separately feeding v′ to the
/// online network and v to the target network to compute L̃_θ,ξ" and
/// minimise "L^BYOL_θ,ξ = L_θ,ξ + L̃_θ,ξ" [BYOL, Grill et al. 2020,
/// arXiv:2006.07733, §3.1]. The sum, not the mean of the two: with SGD or
/// LARS a halved gradient halves its weight against weight decay (lightly
/// lost ~11 points of ImageNet linear accuracy to that, lightly PR #1286).
/// The target projections are detached here too, whatever the caller
/// passes.
///
/// # Shapes
/// all four `[batch, dim]` → `[1]`
pub fn byol_loss<B: Backend>(
    p1: Tensor<B, 2>,
    p2: Tensor<B, 2>,
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let l12 = regression_loss(p1, z2.detach());
    let l21 = regression_loss(p2, z1.detach());
    l12.mean() + l21.mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    fn rand(seed: u64, shape: [usize; 2]) -> Tensor<B, 2> {
        B::seed(&Default::default(), seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn scalar(t: Tensor<B, 1>) -> f32 {
        t.into_scalar()
    }

    #[test]
    fn loss_is_in_zero_four_for_random_inputs() {
        for seed in 0..20 {
            let l = regression_loss(rand(seed, [16, 8]), rand(seed + 100, [16, 8]));
            let v = l.into_data().to_vec::<f32>().expect("f32");
            assert!(
                v.iter().all(|&x| (-1e-5..=4.0 + 1e-5).contains(&x)),
                "{v:?}"
            );
        }
    }

    #[test]
    fn loss_is_zero_for_aligned_and_four_for_opposite_vectors() {
        let p = rand(1, [4, 8]);
        assert!(scalar(regression_loss(p.clone(), p.clone().mul_scalar(3.0)).mean()).abs() < 1e-5);
        assert!((scalar(regression_loss(p.clone(), p.neg()).mean()) - 4.0).abs() < 1e-5);
    }

    #[test]
    fn loss_is_symmetric_in_views() {
        let (p1, p2, z1, z2) = (
            rand(1, [8, 4]),
            rand(2, [8, 4]),
            rand(3, [8, 4]),
            rand(4, [8, 4]),
        );
        let a = scalar(byol_loss(p1.clone(), p2.clone(), z1.clone(), z2.clone()));
        let b = scalar(byol_loss(p2, p1, z2, z1));
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    #[test]
    fn symmetric_loss_is_the_sum_of_the_two_directions() {
        let (p1, p2, z1, z2) = (
            rand(5, [8, 4]),
            rand(6, [8, 4]),
            rand(7, [8, 4]),
            rand(8, [8, 4]),
        );
        let one = scalar(regression_loss(p1.clone(), z2.clone()).mean());
        let other = scalar(regression_loss(p2.clone(), z1.clone()).mean());
        let total = scalar(byol_loss(p1, p2, z1, z2));
        assert!(
            (total - (one + other)).abs() < 1e-5,
            "{total} vs {one} + {other}"
        );
        // the paper's sum, not the mean of the two: opposite pairs give 8
        let p = rand(9, [4, 8]);
        let worst = scalar(byol_loss(p.clone(), p.clone(), p.clone().neg(), p.neg()));
        assert!((worst - 8.0).abs() < 1e-4, "{worst}");
    }

    #[test]
    fn its_gradient_is_exactly_twice_the_mean_of_the_two_directions() {
        // the summed loss doubles every gradient of ½(ℓ + ℓ̃), bit for bit:
        // what lets Adam at (2λ, 2ε) retrace a run of the mean at (λ, ε)
        // (optim.rs, `adam_at_twice_the_decay_and_epsilon_retraces_half_the_gradient`)
        type A = burn::backend::Autodiff<B>;
        let (p1, p2, z1, z2) = (
            rand(11, [8, 4]),
            rand(12, [8, 4]),
            rand(13, [8, 4]),
            rand(14, [8, 4]),
        );
        let gradients = |mean: bool| -> Vec<f32> {
            let a1 = Tensor::<A, 2>::from_inner(p1.clone()).require_grad();
            let a2 = Tensor::<A, 2>::from_inner(p2.clone()).require_grad();
            let (b1, b2) = (
                Tensor::<A, 2>::from_inner(z1.clone()),
                Tensor::<A, 2>::from_inner(z2.clone()),
            );
            let loss = if mean {
                // the formula before 2026-12-01
                (regression_loss(a1.clone(), b2) + regression_loss(a2.clone(), b1))
                    .mean()
                    .mul_scalar(0.5)
            } else {
                byol_loss(a1.clone(), a2.clone(), b1, b2)
            };
            let grads = loss.backward();
            [a1, a2]
                .iter()
                .flat_map(|a| {
                    let g = a.grad(&grads).expect("a gradient");
                    g.into_data().to_vec::<f32>().expect("f32")
                })
                .collect()
        };
        let (sum, mean) = (gradients(false), gradients(true));
        assert_eq!(sum.len(), 64);
        assert!(mean.iter().any(|g| g.abs() > 1e-3), "{mean:?}");
        for (s, m) in sum.iter().zip(&mean) {
            assert_eq!(*s, 2.0 * m);
        }
    }

    #[test]
    fn loss_matches_formula_on_a_hand_example() {
        // p = (1, 0), z = (1, 1): cos = 1/√2, ℓ = 2 − √2
        let p = Tensor::<B, 2>::from_floats([[1.0, 0.0]], &Default::default());
        let z = Tensor::<B, 2>::from_floats([[1.0, 1.0]], &Default::default());
        let l = scalar(regression_loss(p, z));
        assert!((l - (2.0 - 2f32.sqrt())).abs() < 1e-6, "{l}");
    }
}
