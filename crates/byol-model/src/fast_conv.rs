//! Convolutions on burn's Flex CPU backend as one wide matrix product per
//! chunk of images.
//!
//! burn 0.21 computes a convolution's weight gradient as another
//! convolution: the input with its batch and channel axes swapped,
//! convolved by the output gradient (also swapped) used as a kernel the
//! size of the whole output. On Flex that means two element-by-element
//! copies of permuted tensors on one thread, and one matrix product per
//! input channel with only `k × k` (9) columns, which fills a fraction of
//! the SIMD tiles. Its forward pass multiplies one image at a time,
//! `[out, in × k × k]` by `[in × k × k, pixels]`, where `pixels` is 196,
//! 49 or 16 in the small encoder: narrow products, again mostly edge tiles.
//!
//! Here, on `Flex` and `Autodiff<Flex>`, the forward pass is one wide
//! matrix product per chunk of images, `W · colsᵀ` with the im2col matrix
//! of the chunk, `[images × pixels, k × k × in]`, built in parallel from
//! channels-last copies of the images. On `Autodiff<Flex>` the backward
//! step is ours too: the weight gradient is `dW = G · cols`, the output
//! gradient as an `[out, images × pixels]` matrix times the same im2col
//! matrix, and the input gradient is `Gᵀ · W` (the gradient of the im2col
//! matrix) added back onto the pixels it was gathered from (col2im), in
//! place of burn's transposed convolution. Every other backend (CUDA,
//! NdArray) runs burn's convolution unchanged. Outputs and both gradients
//! equal burn's to a relative 1e-5 (the tests below).
//!
//! The step's speed with this module: docs/results.md, "BYOL step against
//! PyTorch". What each part bought, and the variants that lost to Flex's
//! own kernels (an im2col by strided writes, a GEMM + col2im input
//! gradient before the channels-last layout): docs/results-log.md,
//! "Optimising the step".

use burn::tensor::{Tensor, module::conv2d, ops::ConvOptions};

/// `conv2d(x, weight)` without bias, by this module on `Flex` and
/// `Autodiff<Flex>` (see the module docs), by burn elsewhere.
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

/// Whether [`conv2d_no_bias`] takes its own weight gradient on `B`
/// ([`crate::kernels::paths`] decides).
pub fn has_fast_weight_grad<B: burn::prelude::Backend>() -> bool {
    crate::kernels::paths::<B>().conv_backward == crate::kernels::KernelPath::Ours
}

#[cfg(feature = "flex")]
mod flex {
    use std::any::Any;

    use burn::backend::autodiff::NodeId;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, Flex};
    use burn::prelude::Backend;
    use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
    use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};
    use rayon::prelude::*;

    type FlexAd = Autodiff<Flex>;

    /// Floats of im2col matrix built at a time (16 MiB).
    const CHUNK_FLOATS: usize = 4 << 20;

    /// The convolution on `Autodiff<Flex>` with our forward and backward
    /// steps, or on `Flex` with our forward step; `None` on any other
    /// backend, or for grouped or dilated convolutions.
    pub(super) fn try_conv2d<B: Backend>(
        x: &Tensor<B, 4>,
        weight: &Tensor<B, 4>,
        options: &ConvOptions<2>,
    ) -> Option<Tensor<B, 4>> {
        if crate::kernels::paths::<B>().conv_forward != crate::kernels::KernelPath::Ours
            || options.groups != 1
            || options.dilation != [1, 1]
        {
            return None;
        }
        // a kernel larger than the padded input: burn's to handle (or refuse)
        let ([_, _, h, w], [_, _, kh, kw]) = (x.dims(), weight.dims());
        if h + 2 * options.padding[0] < kh || w + 2 * options.padding[1] < kw {
            return None;
        }
        let out: Box<dyn Any> = if let (Some(x), Some(weight)) = (
            (x as &dyn Any).downcast_ref::<Tensor<FlexAd, 4>>(),
            (weight as &dyn Any).downcast_ref::<Tensor<FlexAd, 4>>(),
        ) {
            Box::new(conv2d(x.clone(), weight.clone(), options.clone()))
        } else {
            let x = (x as &dyn Any).downcast_ref::<Tensor<Flex, 4>>()?;
            let weight = (weight as &dyn Any).downcast_ref::<Tensor<Flex, 4>>()?;
            let out = forward(
                x.clone().into_primitive().tensor(),
                weight.clone().into_primitive().tensor(),
                options,
            );
            Box::new(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(
                out,
            )))
        };
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
                let grad_x = input_grad(&x, weight.clone(), grad.clone(), &options);
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
                let out = forward(x.primitive, weight.primitive, &options);
                prep.finish((x_state, weight_state, options), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(x.primitive, weight.primitive, &options))
            }
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }

    /// `conv(x, weight)` as `[n, out, h_out, w_out]`: one matrix product
    /// per chunk of images, `W · colsᵀ`; burn's convolution for tensors
    /// that are not `f32`.
    fn forward(x: FlexTensor, weight: FlexTensor, options: &ConvOptions<2>) -> FlexTensor {
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return Flex::conv2d(x, weight, None, options.clone());
        }
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let geometry = Geometry::new(x.shape().dims(), weight.shape().dims(), options);
        let [n, _, _, _] = x.shape().dims();
        let [out, _, _, _] = weight.shape().dims();
        let Some(ys) = forward_f32(
            x.storage::<f32>(),
            weight.storage::<f32>(),
            n,
            out,
            geometry,
            CHUNK_FLOATS,
        ) else {
            return Flex::conv2d(x, weight, None, options.clone());
        };
        FlexTensor::from_data(TensorData::new(
            ys,
            [n, out, geometry.h_out, geometry.w_out],
        ))
    }

    /// The output of `n` images of `xs` convolved by `ws`
    /// (`[out, in, k_h, k_w]`), building at most `chunk_floats` of im2col
    /// matrix at a time; `None` if Flex's product of `f32` matrices is not
    /// `f32`.
    pub(super) fn forward_f32(
        xs: &[f32],
        ws: &[f32],
        n: usize,
        out: usize,
        geometry: Geometry,
        chunk_floats: usize,
    ) -> Option<Vec<f32>> {
        let (image, pixels) = (geometry.image_len(), geometry.pixels());
        let per_chunk = geometry.images_per_chunk(n, chunk_floats);
        let w_mat = geometry.weight_matrix(ws, out);
        let mut ys = vec![0.0f32; n * out * pixels];
        for start in (0..n).step_by(per_chunk) {
            let images = per_chunk.min(n - start);
            let cols = geometry.im2col(&xs[start * image..(start + images) * image]);
            // [out, images × pixels]: one block copy per (image, channel) into NCHW
            let product = w_mat.clone().matmul(cols.transpose()).into_data();
            let product = product.as_slice::<f32>().ok()?;
            ys[start * out * pixels..(start + images) * out * pixels]
                .par_chunks_mut(out * pixels)
                .enumerate()
                .for_each(|(k, dst)| {
                    for (o, block) in dst.chunks_mut(pixels).enumerate() {
                        let src = (o * images + k) * pixels;
                        block.copy_from_slice(&product[src..src + pixels]);
                    }
                });
        }
        Some(ys)
    }

    /// `dX` of `conv(x, weight)` from the output gradient; burn's for
    /// tensors that are not `f32`.
    fn input_grad(
        x: &FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        options: &ConvOptions<2>,
    ) -> FlexTensor {
        let burns =
            |weight, grad| Flex::conv2d_x_backward(x.clone(), weight, grad, options.clone());
        if weight.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return burns(weight, grad);
        }
        let (weight, grad) = (weight.to_contiguous(), grad.to_contiguous());
        let x_shape: [usize; 4] = x.shape().dims();
        let geometry = Geometry::new(x_shape, weight.shape().dims(), options);
        let [n, _, _, _] = x_shape;
        let [out, _, _, _] = weight.shape().dims();
        match input_grad_f32(
            weight.storage::<f32>(),
            grad.storage::<f32>(),
            n,
            out,
            geometry,
            CHUNK_FLOATS,
        ) {
            Some(dx) => FlexTensor::from_data(TensorData::new(dx, x_shape)),
            None => burns(weight, grad),
        }
    }

    /// `dW[o, (c, i, j)] = Σ_(n, p) G[n, o, p] · X[n, c, p·s + (i, j) − pad]`,
    /// in chunks of images; burn's own weight gradient for tensors that are
    /// not `f32`.
    fn weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return Flex::conv2d_weight_backward(x, weight, grad, options);
        }
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let weight_shape: [usize; 4] = weight.shape().dims();
        let geometry = Geometry::new(x.shape().dims(), weight_shape, &options);
        let [n, _, _, _] = x.shape().dims();
        let [out, _, _, _] = weight_shape;
        weight_grad_f32(
            x.storage::<f32>(),
            grad.storage::<f32>(),
            n,
            out,
            geometry,
            CHUNK_FLOATS,
        )
        .into_primitive()
        .tensor()
    }

    /// `dW` as `[out, in, k_h, k_w]` from `n` images of `x` and of the
    /// output gradient `g`, building at most `chunk_floats` of im2col
    /// matrix at a time.
    pub(super) fn weight_grad_f32(
        xs: &[f32],
        gs: &[f32],
        n: usize,
        out: usize,
        geometry: Geometry,
        chunk_floats: usize,
    ) -> Tensor<Flex, 4> {
        let (image, pixels, row) = (geometry.image_len(), geometry.pixels(), geometry.row_len());
        let per_chunk = geometry.images_per_chunk(n, chunk_floats);
        let device = Default::default();
        let mut total: Option<Tensor<Flex, 2>> = None;
        for start in (0..n).step_by(per_chunk) {
            let images = per_chunk.min(n - start);
            let cols = geometry.im2col(&xs[start * image..(start + images) * image]);
            let part = pack_grad(gs, start, images, out, pixels).matmul(cols);
            total = Some(match total {
                Some(sum) => sum + part,
                None => part,
            });
        }
        let [c, kh, kw] = [geometry.c, geometry.kh, geometry.kw];
        // from the im2col column order, [out, k_h × k_w × in]
        total
            .unwrap_or_else(|| Tensor::zeros([out, row], &device))
            .reshape([out, kh * kw, c])
            .swap_dims(1, 2)
            .reshape([out, c, kh, kw])
    }

    /// The output gradient of images `start..start + images` of `gs`
    /// (`[n, out, pixels]`) as an `[out, images × pixels]` matrix: one
    /// block copy per (image, channel).
    fn pack_grad(
        gs: &[f32],
        start: usize,
        images: usize,
        out: usize,
        pixels: usize,
    ) -> Tensor<Flex, 2> {
        let mut packed = vec![0.0f32; out * images * pixels];
        packed
            .par_chunks_mut(images * pixels)
            .enumerate()
            .for_each(|(o, dst)| {
                for (k, block) in dst.chunks_mut(pixels).enumerate() {
                    let src = ((start + k) * out + o) * pixels;
                    block.copy_from_slice(&gs[src..src + pixels]);
                }
            });
        Tensor::from_data(
            TensorData::new(packed, [out, images * pixels]),
            &Default::default(),
        )
    }

    /// `dX` of `n` images as `[n, in, h, w]`: per chunk of images, the
    /// gradient of the im2col matrix, `Gᵀ · W` (`[images × pixels, k_h ×
    /// k_w × in]`), added back onto the input pixels; `None` if Flex's
    /// product of `f32` matrices is not `f32`.
    pub(super) fn input_grad_f32(
        ws: &[f32],
        gs: &[f32],
        n: usize,
        out: usize,
        geometry: Geometry,
        chunk_floats: usize,
    ) -> Option<Vec<f32>> {
        let (image, pixels) = (geometry.image_len(), geometry.pixels());
        let per_chunk = geometry.images_per_chunk(n, chunk_floats);
        let w_mat = geometry.weight_matrix(ws, out);
        let mut dx = vec![0.0f32; n * image];
        for start in (0..n).step_by(per_chunk) {
            let images = per_chunk.min(n - start);
            let g_mat = pack_grad(gs, start, images, out, pixels);
            let dcols = g_mat.transpose().matmul(w_mat.clone()).into_data();
            geometry.col2im(
                dcols.as_slice::<f32>().ok()?,
                &mut dx[start * image..(start + images) * image],
            );
        }
        Some(dx)
    }

    /// `dst[j][i] = src[i][j]` for `src` of `[rows, cols]` and `dst` of
    /// `[cols, rows]`: eight source rows at a time, so that the reads walk
    /// eight rows in step and each output row gets eight neighbours at
    /// once, instead of one strided read and one write per element.
    pub(super) fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
        const TILE: usize = 8;
        if rows == 0 || cols == 0 {
            return;
        }
        let full = rows - rows % TILE;
        for i0 in (0..full).step_by(TILE) {
            let block: [&[f32]; TILE] =
                std::array::from_fn(|k| &src[(i0 + k) * cols..(i0 + k + 1) * cols]);
            for (j, out) in dst.chunks_exact_mut(rows).enumerate() {
                for (o, row) in out[i0..i0 + TILE].iter_mut().zip(&block) {
                    *o = row[j];
                }
            }
        }
        for i in full..rows {
            let row = &src[i * cols..(i + 1) * cols];
            for (out, &v) in dst.chunks_exact_mut(rows).zip(row) {
                out[i] = v;
            }
        }
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
        /// The geometry of `x` (`[n, in, h, w]`) convolved by a weight of
        /// `[out, in, k_h, k_w]`, output size as burn computes it.
        fn new(x: [usize; 4], weight: [usize; 4], options: &ConvOptions<2>) -> Self {
            let [_, c, h, w] = x;
            let [_, _, kh, kw] = weight;
            let size = |len: usize, k: usize, axis: usize| {
                (len + 2 * options.padding[axis]).saturating_sub(k) / options.stride[axis] + 1
            };
            Self {
                c,
                h,
                w,
                kh,
                kw,
                h_out: size(h, kh, 0),
                w_out: size(w, kw, 1),
                stride: options.stride,
                padding: options.padding,
            }
        }

        /// How many of `n` images fit `chunk_floats` of im2col matrix (at
        /// least one).
        fn images_per_chunk(&self, n: usize, chunk_floats: usize) -> usize {
            let per_image = self.pixels() * self.row_len();
            (chunk_floats / per_image.max(1)).clamp(1, n.max(1))
        }

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
            let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
            Self::new([1, c, h, w], [1, c, k, k], &options)
        }

        /// Length of one im2col row: `in × k_h × k_w`.
        fn row_len(&self) -> usize {
            self.c * self.kh * self.kw
        }

        /// The parts of the input under the kernel at output pixel `p`:
        /// for each kernel line `i` inside the image, `(i, from, j0, j1)`,
        /// where kernel columns `j0..j1` fall inside the image and `from`
        /// is the channels-last offset of the input under column `j0`.
        fn window(&self, p: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
            let g = *self;
            let (oy, ox) = (p / g.w_out.max(1), p % g.w_out.max(1));
            // input column under kernel column 0 (left of the image in the padding)
            let x0 = (ox * g.stride[1]) as isize - g.padding[1] as isize;
            let j0 = (-x0).max(0) as usize;
            let j1 = (g.w as isize - x0).clamp(0, g.kw as isize) as usize;
            let ix0 = (x0 + j0 as isize).max(0) as usize;
            (0..g.kh).filter_map(move |i| {
                let iy = (oy * g.stride[0] + i).checked_sub(g.padding[0])?;
                (iy < g.h && j0 < j1).then_some((i, (iy * g.w + ix0) * g.c, j0, j1))
            })
        }

        /// `[images × pixels, k_h × k_w × in]`, one row per output pixel,
        /// channels innermost, zeros where the kernel overlaps the padding;
        /// `x` holds whole `[in, h, w]` images. Each image is first laid out
        /// channels-last, so that a row is built from runs of `k_w × in`
        /// contiguous floats (one per kernel line inside the image).
        fn im2col(&self, x: &[f32]) -> Tensor<Flex, 2> {
            let g = *self;
            let plane = g.h * g.w;
            let (image, pixels, row) = (g.image_len(), g.pixels(), g.row_len());
            let line = g.kw * g.c;
            let images = x.len() / image.max(1);
            let mut cols = vec![0.0f32; images * pixels * row];
            cols.par_chunks_mut(pixels * row)
                .zip(x.par_chunks(image))
                .for_each_init(
                    || vec![0.0f32; image],
                    |hwc, (dst, src)| {
                        transpose(src, hwc, g.c, plane);
                        for (p, out_row) in dst.chunks_mut(row).enumerate() {
                            for (i, from, j0, j1) in g.window(p) {
                                out_row[i * line + j0 * g.c..i * line + j1 * g.c]
                                    .copy_from_slice(&hwc[from..from + (j1 - j0) * g.c]);
                            }
                        }
                    },
                );
            let data = TensorData::new(cols, [images * pixels, row]);
            Tensor::from_data(data, &Default::default())
        }

        /// The adjoint of [`Self::im2col`]: each row of `dcols`
        /// (`[images × pixels, k_h × k_w × in]`) added back onto the input
        /// pixels it was gathered from, into `dx` (whole `[in, h, w]`
        /// images).
        fn col2im(&self, dcols: &[f32], dx: &mut [f32]) {
            let g = *self;
            let plane = g.h * g.w;
            let (image, row) = (g.image_len(), g.row_len());
            let line = g.kw * g.c;
            dx.par_chunks_mut(image)
                .zip(dcols.par_chunks(g.pixels() * row))
                .for_each_init(
                    || vec![0.0f32; image],
                    |hwc, (dst, src)| {
                        hwc.fill(0.0);
                        for (p, in_row) in src.chunks(row).enumerate() {
                            for (i, from, j0, j1) in g.window(p) {
                                let taps = &in_row[i * line + j0 * g.c..i * line + j1 * g.c];
                                for (acc, t) in hwc[from..from + taps.len()].iter_mut().zip(taps) {
                                    *acc += t;
                                }
                            }
                        }
                        transpose(hwc, dst, plane, g.c);
                    },
                );
        }

        /// Floats in one input image, `in × h × w`.
        fn image_len(&self) -> usize {
            self.c * self.h * self.w
        }

        /// Output pixels of one image, `h_out × w_out`.
        fn pixels(&self) -> usize {
            self.h_out * self.w_out
        }

        /// A `[out, in, k_h, k_w]` weight as an `[out, k_h × k_w × in]`
        /// matrix, the column order of [`Self::im2col`].
        fn weight_matrix(&self, ws: &[f32], out: usize) -> Tensor<Flex, 2> {
            let data = TensorData::new(self.taps_major(ws), [out, self.row_len()]);
            Tensor::from_data(data, &Default::default())
        }

        /// A `[out, in, k_h, k_w]` weight as `[out, k_h × k_w × in]`, the
        /// column order of [`Self::im2col`].
        fn taps_major(&self, ws: &[f32]) -> Vec<f32> {
            let taps = self.kh * self.kw;
            let mut out = vec![0.0f32; ws.len()];
            for (src, dst) in ws
                .chunks(self.row_len().max(1))
                .zip(out.chunks_mut(self.row_len().max(1)))
            {
                transpose(src, dst, self.c, taps);
            }
            out
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, TensorData, module::conv2d, ops::ConvOptions};

    use super::flex::transpose;
    use super::{conv2d_no_bias, has_fast_weight_grad};

    #[test]
    fn transpose_matches_the_definition() {
        for (rows, cols) in [
            (1, 1),
            (3, 5),
            (8, 4),
            (17, 9),
            (32, 196),
            (196, 32),
            (0, 3),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let mut dst = vec![-1.0; rows * cols];
            transpose(&src, &mut dst, rows, cols);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        dst[j * rows + i],
                        src[i * cols + j],
                        "{rows}x{cols} at ({i}, {j})"
                    );
                }
            }
        }
    }

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
            // channels past one transpose tile of 8, with a remainder
            (2, 11, 5, 3, 3, 2),
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
        let d = rel_diff(whole.clone(), by_image);
        assert!(d < 1e-5, "chunked weight gradient differs by {d}");
        assert!(whole.abs().max().into_scalar() > 0.0);
        // the input gradient, with any weight
        let w =
            Tensor::<Flex, 1>::random([out * 3 * 3 * 3], Distribution::Normal(0.0, 1.0), &device)
                .into_data();
        let Ok(ws) = w.as_slice::<f32>() else {
            panic!("f32 data");
        };
        let dx = |chunk| {
            let Some(dx) = super::flex::input_grad_f32(ws, gs, n, out, geometry, chunk) else {
                panic!("f32 products");
            };
            Tensor::<Flex, 4>::from_data(TensorData::new(dx, [n, 3, 6, 6]), &device)
        };
        let (whole, by_image) = (dx(usize::MAX), dx(1));
        let d = rel_diff(whole.clone(), by_image);
        assert!(d < 1e-5, "chunked input gradient differs by {d}");
        assert!(whole.abs().max().into_scalar() > 0.0);
    }

    #[test]
    fn forward_chunks_add_up_and_the_inner_backend_matches_burn() {
        let device = Default::default();
        let geometry = super::flex::Geometry::for_test(3, 7, 7, 3, 2, 1);
        let (n, out) = (5, 4);
        let x = Tensor::<Flex, 4>::random([n, 3, 7, 7], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<Flex, 4>::random([out, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let (xd, wd) = (x.clone().into_data(), w.clone().into_data());
        let (Ok(xs), Ok(ws)) = (xd.as_slice::<f32>(), wd.as_slice::<f32>()) else {
            panic!("f32 data");
        };
        let whole = super::flex::forward_f32(xs, ws, n, out, geometry, usize::MAX);
        let by_image = super::flex::forward_f32(xs, ws, n, out, geometry, 1);
        let (Some(whole), Some(by_image)) = (whole, by_image) else {
            panic!("f32 products");
        };
        let as_tensor = |ys: Vec<f32>| {
            Tensor::<Flex, 4>::from_data(TensorData::new(ys, [n, out, 4, 4]), &device)
        };
        let d = rel_diff(as_tensor(whole), as_tensor(by_image));
        assert!(d < 1e-6, "chunked forward differs by {d}");
        // on the inner backend (evaluation), conv2d_no_bias is ours too
        let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
        let ours = conv2d_no_bias(x.clone(), w.clone(), options.clone());
        let burns = conv2d(x, w, None, options);
        assert_eq!(ours.dims(), [n, out, 4, 4]);
        let d = rel_diff(burns, ours);
        assert!(d < 1e-5, "inner-backend forward differs from burn's by {d}");
    }

    #[test]
    fn only_autodiff_flex_takes_the_fast_path() {
        assert!(has_fast_weight_grad::<Autodiff<Flex>>());
        assert!(!has_fast_weight_grad::<Flex>());
    }
}
