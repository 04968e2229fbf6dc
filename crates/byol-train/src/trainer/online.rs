//! The online linear classifier: a linear layer on the detached online
//! representation, trained with its own Adam on the labels of the
//! training images as they pass through pretraining, and scored on the
//! test split at each epoch end (`eval.online_linear`). DeepMind's BYOL,
//! solo-learn and lightly report the same figure during pretraining: the
//! standard linear accuracy, at no extra pass over the training data.
//!
//! Nothing flows back into BYOL: the classifier reads the representations
//! the step already computed, cut from the graph, and its seeded
//! initialisation holds the backend's seed lock, so a run with it trains
//! the same networks as a run without it.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::TrainError;
use crate::checkpoint::{load_module, load_record, save_module, save_record};

/// File of the classifier in a checkpoint folder.
const WEIGHTS: &str = "online-linear.mpk";
/// File of its optimizer state.
const OPTIMIZER: &str = "online-linear-optimizer.mpk";

/// The classifier, its optimizer and the epoch's summed loss.
pub(crate) struct OnlineLinear<B: AutodiffBackend> {
    /// `None` only inside [`OnlineLinear::train`].
    linear: Option<Linear<B>>,
    optimizer: OptimizerAdaptor<Adam, Linear<B>, B>,
    lr: f64,
    /// Cross-entropy summed over the epoch's steps, on the device.
    loss_sum: Tensor<B::InnerBackend, 1>,
    steps: usize,
}

/// Top-1 and top-5 of the classifier on the test split, and its mean
/// training loss over the epoch (on augmented views).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OnlineScore {
    pub(crate) top1: f64,
    pub(crate) top5: f64,
    pub(crate) train_loss: f64,
}

impl<B: AutodiffBackend> OnlineLinear<B> {
    /// A fresh classifier from `dim` features to `classes`, its weights
    /// drawn under `seed`.
    pub(crate) fn new(dim: usize, classes: usize, lr: f64, seed: u64, device: &B::Device) -> Self {
        let linear = {
            let _lock = byol_model::seeded::<B>(device, seed);
            let linear = LinearConfig::new(dim, classes).init(device);
            // burn draws parameters lazily: draw them under the lock
            byol_model::materialize(&linear);
            linear
        };
        Self {
            linear: Some(linear),
            optimizer: AdamConfig::new().init(),
            lr,
            loss_sum: Tensor::zeros([1], device),
            steps: 0,
        }
    }

    fn linear(&self) -> &Linear<B> {
        self.linear
            .as_ref()
            .expect("the classifier is in place between steps")
    }

    /// One optimizer step on `features` (detached online representations,
    /// `[n, dim]`) and their `labels`; the loss stays on the device.
    pub(crate) fn train(&mut self, features: Tensor<B::InnerBackend, 2>, labels: &[u32]) {
        let device = features.device();
        let x = Tensor::<B, 2>::from_inner(features);
        let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
        let targets =
            Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [labels.len()]), &device);
        let linear = self
            .linear
            .take()
            .expect("the classifier is in place between steps");
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(linear.forward(x), targets);
        let grads = GradientsParams::from_grads(loss.backward(), &linear);
        self.linear = Some(self.optimizer.step(self.lr, linear, grads));
        self.loss_sum = self.loss_sum.clone() + loss.inner();
        self.steps += 1;
    }

    /// The epoch's score on the test features and labels; restarts the
    /// epoch's loss.
    ///
    /// # Errors
    ///
    /// [`TrainError::Eval`] when the logits cannot be read back.
    pub(crate) fn end_epoch(
        &mut self,
        test_features: Tensor<B::InnerBackend, 2>,
        test_labels: &[u32],
    ) -> Result<OnlineScore, TrainError> {
        let logits = self.linear().valid().forward(test_features);
        let (top1, top5) = byol_eval::logit_accuracy(logits, test_labels)?;
        let sum = super::readback::scalar(self.loss_sum.clone());
        let train_loss = f64::from(sum) / self.steps.max(1) as f64;
        self.loss_sum = self.loss_sum.zeros_like();
        self.steps = 0;
        Ok(OnlineScore {
            top1,
            top5,
            train_loss,
        })
    }

    /// The epoch's training losses so far, summed (read back from the
    /// device), and their count, for the checkpoint's state.
    pub(crate) fn epoch_loss(&self) -> (f64, usize) {
        let sum = super::readback::scalar(self.loss_sum.clone());
        (f64::from(sum), self.steps)
    }

    /// Continues an epoch whose losses so far summed to `sum` over
    /// `steps` steps (from a checkpoint's state).
    pub(crate) fn continue_epoch(&mut self, sum: f64, steps: usize) {
        let device = self.loss_sum.device();
        self.loss_sum = Tensor::from_floats([sum as f32], &device);
        self.steps = steps;
    }

    /// Writes the classifier and its optimizer state into a checkpoint
    /// folder (the epoch's loss so far goes into the run's state, see
    /// [`OnlineLinear::epoch_loss`]).
    ///
    /// # Errors
    ///
    /// [`TrainError::Output`] naming the file.
    pub(crate) fn save(&self, dir: &Path) -> Result<(), TrainError> {
        save_module::<B, _>(self.linear().clone(), &dir.join(WEIGHTS))?;
        save_record::<B, _>(self.optimizer.to_record(), &dir.join(OPTIMIZER))
    }

    /// The classifier of checkpoint `dir`, or `self` unchanged (with a log
    /// line) when the checkpoint has none: a run started without it, or
    /// before it existed.
    ///
    /// # Errors
    ///
    /// [`TrainError::Checkpoint`] for files that exist but do not load.
    pub(crate) fn load(mut self, dir: &Path, device: &B::Device) -> Result<Self, TrainError> {
        if !dir.join(WEIGHTS).exists() {
            tracing::info!(
                "{}: no online linear classifier in the checkpoint; it starts afresh",
                dir.display()
            );
            return Ok(self);
        }
        let linear = load_module(self.linear().clone(), &dir.join(WEIGHTS), device)?;
        let record = load_record::<B, _>(&dir.join(OPTIMIZER), device)?;
        self.optimizer = self.optimizer.load_record(record);
        self.linear = Some(linear);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type A = Autodiff<Flex>;

    /// Two separable classes along the first feature.
    fn features(n: usize) -> (Tensor<Flex, 2>, Vec<u32>) {
        let mut v = Vec::with_capacity(n * 4);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = (i % 2) as u32;
            let sign = if class == 0 { 1.0 } else { -1.0 };
            v.extend([
                sign * (1.0 + (i % 3) as f32),
                0.3,
                -0.2,
                (i % 5) as f32 * 0.1,
            ]);
            labels.push(class);
        }
        let t = Tensor::<Flex, 1>::from_floats(v.as_slice(), &Default::default()).reshape([n, 4]);
        (t, labels)
    }

    #[test]
    fn it_learns_separable_classes_and_reports_its_loss() {
        let device = Default::default();
        let mut online = OnlineLinear::<A>::new(4, 2, 1e-1, 3, &device);
        let (x, y) = features(32);
        let before = online.end_epoch(x.clone(), &y).expect("score");
        for _ in 0..30 {
            online.train(x.clone(), &y);
        }
        let after = online.end_epoch(x.clone(), &y).expect("score");
        assert_eq!(after.top1, 1.0, "{before:?} → {after:?}");
        assert!(after.train_loss.is_finite() && after.train_loss > 0.0);
        assert_eq!(before.train_loss, 0.0, "no step, no loss");
    }

    #[test]
    fn a_checkpoint_restores_the_classifier_and_its_optimizer() {
        let device = Default::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let (x, y) = features(16);
        let mut a = OnlineLinear::<A>::new(4, 2, 1e-2, 3, &device);
        a.train(x.clone(), &y);
        a.save(dir.path()).expect("save");
        let mut b = OnlineLinear::<A>::new(4, 2, 1e-2, 9, &device)
            .load(dir.path(), &device)
            .expect("load");
        // the same next step from the same weights and moments
        a.train(x.clone(), &y);
        b.train(x.clone(), &y);
        let w = |o: &OnlineLinear<A>| -> Vec<f32> {
            o.linear().weight.val().into_data().to_vec().expect("f32")
        };
        assert_eq!(w(&a), w(&b));
        // a checkpoint without one leaves a fresh classifier
        let empty = tempfile::tempdir().expect("tempdir");
        let c = OnlineLinear::<A>::new(4, 2, 1e-2, 9, &device)
            .load(empty.path(), &device)
            .expect("absent is fine");
        assert_ne!(w(&c), w(&a));
    }
}
