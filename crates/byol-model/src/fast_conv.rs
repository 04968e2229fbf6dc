//! Convolutions with a faster weight gradient on burn's Flex CPU backend.
//!
//! burn 0.21 computes a convolution's weight gradient as another
//! convolution: the input with its batch and channel axes swapped,
//! convolved by the output gradient (also swapped) used as a kernel the
//! size of the whole output. On Flex that means two element-by-element
//! copies of permuted tensors on one thread, and one matrix product per
//! input channel with only `k × k` (9) columns, which fills a fraction of
//! the SIMD tiles: a third of the CPU time of a BYOL step of the small
//! encoder (docs/results.md, "Optimising the step").
//!
//! Here, on `Autodiff<Flex>` only, the same convolution is recorded with a
//! backward step of our own: the input gradient is burn's, and the weight
//! gradient is `dW = G · cols`, the output gradient as a `[out, pixels]`
//! matrix times the im2col matrix of the input, `[pixels, in × k × k]`,
//! built in parallel, one wide matrix product per chunk of images. The
//! forward pass is burn's. Every other backend (CUDA, NdArray, the inner
//! backend of evaluation) runs burn's convolution unchanged.

use burn::tensor::{Tensor, module::conv2d, ops::ConvOptions};

/// `conv2d(x, weight)` without bias, with the weight gradient of this
/// module on `Autodiff<Flex>` (see the module docs).
///
/// # Shapes
/// `x`: `[batch, in, h, w]`, `weight`: `[out, in, k_h, k_w]` →
/// `[batch, out, h_out, w_out]`
pub fn conv2d_no_bias<B: burn::prelude::Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::try_conv2d(&x, &weight, &options) {
        return out;
    }
    conv2d(x, weight, None, options)
}

/// Whether [`conv2d_no_bias`] takes its own weight gradient on `B`.
pub fn has_fast_weight_grad<B: burn::prelude::Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        flex::is_flex_autodiff::<B>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

#[cfg(feature = "flex")]
mod flex {
    use std::any::{Any, TypeId};

    use burn::backend::autodiff::NodeId;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::{Autodiff, Flex};
    use burn::prelude::Backend;
    use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
    use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};
    use rayon::prelude::*;

    type FlexAd = Autodiff<Flex>;

    /// Floats of im2col matrix built at a time (16 MiB).
    const CHUNK_FLOATS: usize = 4 << 20;

    pub(super) fn is_flex_autodiff<B: Backend>() -> bool {
        TypeId::of::<B>() == TypeId::of::<FlexAd>()
    }

    /// The convolution on `Autodiff<Flex>` with our backward step; `None`
    /// on any other backend, or for grouped or dilated convolutions.
    pub(super) fn try_conv2d<B: Backend>(
        x: &Tensor<B, 4>,
        weight: &Tensor<B, 4>,
        options: &ConvOptions<2>,
    ) -> Option<Tensor<B, 4>> {
        if options.groups != 1 || options.dilation != [1, 1] {
            return None;
        }
        let x = (x as &dyn Any).downcast_ref::<Tensor<FlexAd, 4>>()?.clone();
        let weight = (weight as &dyn Any)
            .downcast_ref::<Tensor<FlexAd, 4>>()?
            .clone();
        let out: Box<dyn Any> = Box::new(conv2d(x, weight, options.clone()));
        out.downcast::<Tensor<B, 4>>().ok().map(|out| *out)
    }

    #[derive(Debug)]
    struct Conv2dBackward;

    impl Backward<Flex, 2> for Conv2dBackward {
        type State = (NodeId, NodeId, ConvOptions<2>);

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_weight] = ops.parents;
            let grad = grads.consume::<Flex>(&ops.node);
            let (x_state, weight_state, options) = ops.state;
            let x = checkpointer.retrieve_node_output::<FloatTensor<Flex>>(x_state);
            let weight = checkpointer.retrieve_node_output::<FloatTensor<Flex>>(weight_state);
            if let Some(node) = node_x {
                let grad_x = Flex::conv2d_x_backward(
                    x.clone(),
                    weight.clone(),
                    grad.clone(),
                    options.clone(),
                );
                grads.register::<Flex>(node.id, grad_x);
            }
            if let Some(node) = node_weight {
                let grad_weight = weight_grad(x, weight, grad, options);
                grads.register::<Flex>(node.id, grad_weight);
            }
        }
    }

    fn conv2d(
        x: Tensor<FlexAd, 4>,
        weight: Tensor<FlexAd, 4>,
        options: ConvOptions<2>,
    ) -> Tensor<FlexAd, 4> {
        let x = x.into_primitive().tensor();
        let weight = weight.into_primitive().tensor();
        let out = match Conv2dBackward
            .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                prep.finish(
                    (x_state, weight_state, options.clone()),
                    Flex::conv2d(x.primitive, weight.primitive, None, options),
                )
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::conv2d(x.primitive, weight.primitive, None, options))
            }
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    /// `dW[o, (c, i, j)] = Σ_(n, p) G[n, o, p] · X[n, c, p·s + (i, j) − pad]`,
    /// in chunks of images; burn's own weight gradient for tensors that are
    /// not `f32`.
    fn weight_grad(
        x: FloatTensor<Flex>,
        weight: FloatTensor<Flex>,
        grad: FloatTensor<Flex>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Flex> {
        let x = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(x));
        let g = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(grad));
        let [n, c, h, w] = x.dims();
        let [_, out, h_out, w_out] = g.dims();
        let weight_shape: [usize; 4] = weight.shape().dims();
        let [_, _, kh, kw] = weight_shape;
        let (x_data, g_data) = (x.clone().into_data(), g.clone().into_data());
        let (Ok(xs), Ok(gs)) = (x_data.as_slice::<f32>(), g_data.as_slice::<f32>()) else {
            return Flex::conv2d_weight_backward(
                x.into_primitive().tensor(),
                weight,
                g.into_primitive().tensor(),
                options,
            );
        };
        let geometry = Geometry {
            c,
            h,
            w,
            kh,
            kw,
            h_out,
            w_out,
            stride: options.stride,
            padding: options.padding,
        };
        weight_grad_f32(xs, gs, n, out, geometry, CHUNK_FLOATS)
            .reshape(weight_shape)
            .into_primitive()
            .tensor()
    }

    /// `dW` as `[out, in × k_h × k_w]` from `n` images of `x` and of the
    /// output gradient `g`, building at most `chunk_floats` of im2col
    /// matrix at a time.
    pub(super) fn weight_grad_f32(
        xs: &[f32],
        gs: &[f32],
        n: usize,
        out: usize,
        geometry: Geometry,
        chunk_floats: usize,
    ) -> Tensor<Flex, 2> {
        let image = geometry.c * geometry.h * geometry.w;
        let pixels = geometry.h_out * geometry.w_out;
        let row = geometry.row_len();
        let per_chunk = (chunk_floats / (pixels * row).max(1)).clamp(1, n.max(1));
        let device = Default::default();
        let mut total: Option<Tensor<Flex, 2>> = None;
        for start in (0..n).step_by(per_chunk) {
            let images = per_chunk.min(n - start);
            let cols = geometry.im2col(&xs[start * image..(start + images) * image]);
            // G of these images as [out, images × pixels]: one block copy per (image, channel)
            let mut g_packed = vec![0.0f32; out * images * pixels];
            g_packed
                .par_chunks_mut(images * pixels)
                .enumerate()
                .for_each(|(o, dst)| {
                    for (k, block) in dst.chunks_mut(pixels).enumerate() {
                        let src = ((start + k) * out + o) * pixels;
                        block.copy_from_slice(&gs[src..src + pixels]);
                    }
                });
            let g_mat = Tensor::<Flex, 2>::from_data(
                TensorData::new(g_packed, [out, images * pixels]),
                &device,
            );
            let cols = Tensor::<Flex, 2>::from_data(
                TensorData::new(cols, [images * pixels, row]),
                &device,
            );
            let part = g_mat.matmul(cols);
            total = Some(match total {
                Some(sum) => sum + part,
                None => part,
            });
        }
        total.unwrap_or_else(|| Tensor::zeros([out, row], &device))
    }

    /// Sizes of one convolution, for im2col.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Geometry {
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        h_out: usize,
        w_out: usize,
        stride: [usize; 2],
        padding: [usize; 2],
    }

    impl Geometry {
        /// Square images and kernel, output size as burn computes it.
        #[cfg(test)]
        pub(super) fn for_test(
            c: usize,
            h: usize,
            w: usize,
            k: usize,
            stride: usize,
            padding: usize,
        ) -> Self {
            let out = |size: usize| (size + 2 * padding - k) / stride + 1;
            Self {
                c,
                h,
                w,
                kh: k,
                kw: k,
                h_out: out(h),
                w_out: out(w),
                stride: [stride, stride],
                padding: [padding, padding],
            }
        }

        /// Length of one im2col row: `in × k_h × k_w`.
        fn row_len(&self) -> usize {
            self.c * self.kh * self.kw
        }

        /// `[images × pixels, in × k_h × k_w]`, one row per output pixel,
        /// zeros where the kernel overlaps the padding; `x` holds whole
        /// `[in, h, w]` images.
        fn im2col(&self, x: &[f32]) -> Vec<f32> {
            let g = *self;
            let image = g.c * g.h * g.w;
            let pixels = g.h_out * g.w_out;
            let row = g.row_len();
            let images = x.len() / image.max(1);
            let mut cols = vec![0.0f32; images * pixels * row];
            cols.par_chunks_mut(pixels * row)
                .zip(x.par_chunks(image))
                .for_each(|(dst, src)| {
                    for oy in 0..g.h_out {
                        for ox in 0..g.w_out {
                            let out_row = &mut dst[(oy * g.w_out + ox) * row..][..row];
                            for ch in 0..g.c {
                                let plane = &src[ch * g.h * g.w..][..g.h * g.w];
                                for i in 0..g.kh {
                                    let Some(iy) = (oy * g.stride[0] + i).checked_sub(g.padding[0])
                                    else {
                                        continue;
                                    };
                                    if iy >= g.h {
                                        continue;
                                    }
                                    let line = &plane[iy * g.w..][..g.w];
                                    let taps = &mut out_row[(ch * g.kh + i) * g.kw..][..g.kw];
                                    for (j, tap) in taps.iter_mut().enumerate() {
                                        if let Some(ix) =
                                            (ox * g.stride[1] + j).checked_sub(g.padding[1])
                                            && ix < g.w
                                        {
                                            *tap = line[ix];
                                        }
                                    }
                                }
                            }
                        }
                    }
                });
            cols
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, module::conv2d, ops::ConvOptions};

    use super::{conv2d_no_bias, has_fast_weight_grad};

    type B = Autodiff<Flex>;

    /// Largest absolute difference, relative to the larger tensor's scale.
    fn rel_diff(a: Tensor<Flex, 4>, b: Tensor<Flex, 4>) -> f32 {
        let scale = a.clone().abs().max().into_scalar().max(1e-6);
        (a - b).abs().max().into_scalar() / scale
    }

    /// Output, input and weight gradients of `Σ r ⊙ conv(x, w)`, by `conv`.
    fn grads(
        conv: impl Fn(Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
        x: &Tensor<Flex, 4>,
        w: &Tensor<Flex, 4>,
        r: &Tensor<Flex, 4>,
    ) -> (Tensor<Flex, 4>, Tensor<Flex, 4>, Tensor<Flex, 4>) {
        let x = Tensor::<B, 4>::from_inner(x.clone()).require_grad();
        let w = Tensor::<B, 4>::from_inner(w.clone()).require_grad();
        let out = conv(x.clone(), w.clone());
        let g = (out.clone() * Tensor::from_inner(r.clone()))
            .sum()
            .backward();
        let (Some(gx), Some(gw)) = (x.grad(&g), w.grad(&g)) else {
            panic!("both inputs track gradients");
        };
        (out.inner(), gx, gw)
    }

    #[test]
    fn gradients_match_burns_convolution() {
        let device = Default::default();
        // (images, in, size, out, kernel, stride), as the encoders use them:
        // 3×3 at stride 1 and 2, 1×1 shortcuts at stride 2, a 1-channel stem,
        // odd sizes where the last window overlaps the padding
        for (case, &(n, c, size, out, k, stride)) in [
            (3, 2, 7, 4, 3, 1),
            (3, 2, 7, 4, 3, 2),
            (2, 3, 6, 5, 1, 2),
            (4, 1, 9, 3, 3, 2),
            (5, 4, 5, 2, 3, 1),
        ]
        .iter()
        .enumerate()
        {
            <Flex as burn::prelude::Backend>::seed(&device, case as u64);
            let x = Tensor::<Flex, 4>::random(
                [n, c, size, size],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let w =
                Tensor::<Flex, 4>::random([out, c, k, k], Distribution::Normal(0.0, 1.0), &device);
            let options = ConvOptions::new([stride, stride], [k / 2, k / 2], [1, 1], 1);
            let side = (size + 2 * (k / 2) - k) / stride + 1;
            // one r for both: other tests draw from the same generator meanwhile
            let r = Tensor::<Flex, 4>::random(
                [n, out, side, side],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let ours = grads(|x, w| conv2d_no_bias(x, w, options.clone()), &x, &w, &r);
            let burns = grads(|x, w| conv2d(x, w, None, options.clone()), &x, &w, &r);
            assert_eq!(ours.2.dims(), [out, c, k, k], "case {case}");
            for (what, a, b) in [
                ("output", ours.0, burns.0),
                ("input grad", ours.1, burns.1),
                ("weight grad", ours.2, burns.2),
            ] {
                let d = rel_diff(b, a);
                assert!(d < 1e-5, "case {case}: {what} differs from burn's by {d}");
            }
        }
    }

    #[test]
    fn chunks_of_images_add_up_to_the_whole_batch() {
        let device = Default::default();
        let geometry = super::flex::Geometry::for_test(3, 6, 6, 3, 2, 1);
        let (n, out) = (5, 4);
        let x = Tensor::<Flex, 1>::random([n * 3 * 6 * 6], Distribution::Normal(0.0, 1.0), &device);
        let g =
            Tensor::<Flex, 1>::random([n * out * 3 * 3], Distribution::Normal(0.0, 1.0), &device);
        let (x, g) = (x.into_data(), g.into_data());
        let (Ok(xs), Ok(gs)) = (x.as_slice::<f32>(), g.as_slice::<f32>()) else {
            panic!("f32 data");
        };
        let whole = super::flex::weight_grad_f32(xs, gs, n, out, geometry, usize::MAX);
        // 1 float per chunk: one image at a time
        let by_image = super::flex::weight_grad_f32(xs, gs, n, out, geometry, 1);
        let d = rel_diff(whole.clone().unsqueeze(), by_image.unsqueeze());
        assert!(d < 1e-5, "chunked weight gradient differs by {d}");
        assert!(whole.abs().max().into_scalar() > 0.0);
    }

    #[test]
    fn only_autodiff_flex_takes_the_fast_path() {
        assert!(has_fast_weight_grad::<Autodiff<Flex>>());
        assert!(!has_fast_weight_grad::<Flex>());
    }
}
