//! The data pipeline of pretraining: a producer thread decodes and
//! augments the batches of the run in order, a bounded number ahead of the
//! model, so that the next batch is ready while the current one computes.
//!
//! Everything random is a pure function of the run seed, the epoch and the
//! step — the epoch's shuffle, each batch's augmentation seed — so a run
//! resumed at step k sees exactly the batches an uninterrupted run sees from
//! step k on. Memory: at most `prefetch + 2` batches of views (the
//! channel's `prefetch`, the one the producer is making or waiting to send,
//! and the one the consumer holds) and one decoded image per rayon thread
//! exist at a time, whatever the dataset's size.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use byol_augment::{AugmentConfig, two_views, two_views_with};
use byol_data::{Dataset, Image, OnCorrupt};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::TrainError;

/// The steps of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Run seed.
    pub seed: u64,
    /// Images per batch.
    pub batch_size: usize,
    /// Batches per epoch (the incomplete last one is dropped).
    pub steps_per_epoch: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// First step to produce (0 for a fresh run, k when resuming).
    pub start_step: usize,
}

/// One batch of two views, `[n, channels, size, size]` each, flattened.
#[derive(Debug)]
pub struct Batch {
    /// 0-based step of the run.
    pub step: usize,
    /// 1-based epoch.
    pub epoch: usize,
    /// Images in the batch (fewer than the batch size when bad images were
    /// skipped).
    pub len: usize,
    /// First views.
    pub view1: Vec<f32>,
    /// Second views.
    pub view2: Vec<f32>,
    /// The images' labels, in order; `None` unless every image has one.
    pub labels: Option<Vec<u32>>,
    /// Samples left out of this batch as unreadable, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Independent seeds for each (epoch, step): [`byol_augment::mix_seed`],
/// under the name the loader's callers know.
pub use byol_augment::mix_seed as mix;

/// The order of the `n` samples in `epoch` (1-based) of a run with `seed`.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(mix(seed, epoch as u64, 0));
    order.shuffle(&mut rng);
    order
}

/// Augmentation seed of the batch of `step` (0-based) in `epoch`.
pub fn batch_seed(seed: u64, epoch: usize, step: usize) -> u64 {
    mix(seed, epoch as u64, step as u64 + 1)
}

/// Makes the batch of `step`: each image decoded and both its views made in
/// one rayon task ([`two_views_with`]), so that decoding and augmenting
/// overlap and only one decoded image per thread is held.
///
/// The views are those of [`two_views`] over the batch's readable images.
/// When some image cannot be read and `on_corrupt` is `Skip`, the others
/// are decoded again and augmented as the batch they form (rare: the
/// pre-scan of an image folder drops the files whose header is bad).
///
/// # Errors
///
/// The first decode error with `OnCorrupt::Fail`; [`TrainError::Dataset`]
/// when skipping leaves fewer than 2 images.
pub fn make_batch(
    dataset: &dyn Dataset,
    order: &[usize],
    plan: &Plan,
    step: usize,
    augment: &AugmentConfig,
    on_corrupt: OnCorrupt,
) -> Result<Batch, TrainError> {
    let epoch = step / plan.steps_per_epoch + 1;
    let k = step % plan.steps_per_epoch;
    let indices = &order[k * plan.batch_size..(k + 1) * plan.batch_size];
    let seed = batch_seed(plan.seed, epoch, step);
    let loaded = two_views_with(indices.len(), dataset.channels(), augment, seed, |j| {
        dataset.image(indices[j])
    });
    let (good, view1, view2, skipped) = match loaded.failed.into_iter().next() {
        None => (indices.to_vec(), loaded.view1, loaded.view2, Vec::new()),
        Some((_, e)) if on_corrupt == OnCorrupt::Fail => return Err(e.into()),
        Some(_) => skip_bad(dataset, indices, augment, seed, step)?,
    };
    let labels = good.iter().map(|&i| dataset.label(i)).collect();
    Ok(Batch {
        step,
        epoch,
        len: good.len(),
        view1,
        view2,
        labels,
        skipped,
    })
}

/// The readable images of `indices`, their views (as [`two_views`] of
/// those images alone) and the unreadable ones with the reason.
#[allow(clippy::type_complexity)]
fn skip_bad(
    dataset: &dyn Dataset,
    indices: &[usize],
    augment: &AugmentConfig,
    seed: u64,
    step: usize,
) -> Result<(Vec<usize>, Vec<f32>, Vec<f32>, Vec<(String, String)>), TrainError> {
    let decoded: Vec<(usize, Result<Image, byol_data::DataError>)> =
        indices.par_iter().map(|&i| (i, dataset.image(i))).collect();
    let mut good = Vec::with_capacity(decoded.len());
    let mut images = Vec::with_capacity(decoded.len());
    let mut skipped = Vec::new();
    for (i, result) in decoded {
        match result {
            Ok(image) => {
                good.push(i);
                images.push(image);
            }
            Err(e) => skipped.push((dataset.name(i), e.to_string())),
        }
    }
    if images.len() < 2 {
        return Err(TrainError::Dataset(format!(
            "step {step}: only {} readable images in the batch after skipping bad ones",
            images.len()
        )));
    }
    let refs: Vec<_> = images.iter().map(Image::as_ref).collect();
    let (view1, view2) = two_views(&refs, augment, seed);
    Ok((good, view1, view2, skipped))
}

/// Produces the batches of `plan` from `start_step` into `tx`, each passed
/// through `prepare` first, until the run ends, an error is sent, or the
/// receiver is gone.
fn produce<P>(
    dataset: &dyn Dataset,
    plan: Plan,
    augment: &AugmentConfig,
    on_corrupt: OnCorrupt,
    prepare: &dyn Fn(&mut Batch) -> P,
    tx: SyncSender<Result<(Batch, P), TrainError>>,
) {
    let mut order: Option<(usize, Vec<usize>)> = None;
    for step in plan.start_step..plan.total_steps {
        let epoch = step / plan.steps_per_epoch + 1;
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((epoch, epoch_order(plan.seed, epoch, dataset.len())));
        }
        let Some((_, indices)) = &order else {
            return;
        };
        let batch = make_batch(dataset, indices, &plan, step, augment, on_corrupt).map(|mut b| {
            let prepared = prepare(&mut b);
            (b, prepared)
        });
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            return;
        }
    }
}

/// The consumer's end of the pipeline, measuring the time spent waiting;
/// each batch comes with what the producer's `prepare` made of it (`P`).
pub struct Loader<P = ()> {
    rx: Receiver<Result<(Batch, P), TrainError>>,
    waited: Duration,
}

impl<P> Loader<P> {
    /// The next batch and what was prepared from it, `None` after the last;
    /// adds the time blocked to [`Loader::waited`].
    ///
    /// # Errors
    ///
    /// What the producer met (decode errors with `on_corrupt = "fail"`).
    pub fn next_prepared(&mut self) -> Result<Option<(Batch, P)>, TrainError> {
        let start = Instant::now();
        let batch = self.rx.recv();
        self.waited += start.elapsed();
        batch.ok().transpose()
    }

    /// Total time spent waiting for data so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Loader {
    /// The next batch, `None` after the last; adds the time blocked to
    /// [`Loader::waited`].
    ///
    /// # Errors
    ///
    /// What the producer met (decode errors with `on_corrupt = "fail"`).
    pub fn next_batch(&mut self) -> Result<Option<Batch>, TrainError> {
        Ok(self.next_prepared()?.map(|(batch, ())| batch))
    }
}

/// Runs `consume` with a [`Loader`] fed by a producer thread for `plan`,
/// `prefetch` batches ahead. The producer stops when `consume` returns.
pub fn with_loader<T>(
    dataset: &dyn Dataset,
    plan: Plan,
    augment: &AugmentConfig,
    on_corrupt: OnCorrupt,
    prefetch: usize,
    consume: impl FnOnce(&mut Loader) -> T,
) -> T {
    with_prepared_loader(
        dataset,
        plan,
        augment,
        on_corrupt,
        prefetch,
        &|_| (),
        consume,
    )
}

/// [`with_loader`] whose producer thread also runs `prepare` on each batch
/// before handing it over: the trainer uploads the views to the device
/// there (taking them out of the batch), so the copy overlaps the step in
/// flight instead of preceding the next one, as burn's own data loaders
/// build device tensors in their workers.
pub fn with_prepared_loader<T, P: Send>(
    dataset: &dyn Dataset,
    plan: Plan,
    augment: &AugmentConfig,
    on_corrupt: OnCorrupt,
    prefetch: usize,
    prepare: &(dyn Fn(&mut Batch) -> P + Sync),
    consume: impl FnOnce(&mut Loader<P>) -> T,
) -> T {
    let (tx, rx) = sync_channel(prefetch.max(1));
    std::thread::scope(|scope| {
        scope.spawn(move || produce(dataset, plan, augment, on_corrupt, prepare, tx));
        let mut loader = Loader {
            rx,
            waited: Duration::ZERO,
        };
        consume(&mut loader)
        // `loader` (the receiver) is dropped here: a producer blocked in
        // `send` wakes with an error and returns before the scope ends
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use byol_data::{IdxDataset, ImageSet};

    fn dataset(n: usize) -> IdxDataset {
        let pixels: Vec<u8> = (0..n * 64).map(|i| (i * 31 % 256) as u8).collect();
        IdxDataset::new(
            ImageSet {
                pixels,
                height: 8,
                width: 8,
                channels: 1,
            },
            None,
            "t",
        )
        .expect("no labels")
    }

    fn plan(start_step: usize) -> Plan {
        Plan {
            seed: 3,
            batch_size: 4,
            steps_per_epoch: 5,
            total_steps: 12,
            start_step,
        }
    }

    fn all(start: usize, prefetch: usize) -> Vec<Batch> {
        let ds = dataset(21);
        let aug = AugmentConfig {
            size: 8,
            ..AugmentConfig::default()
        };
        with_loader(&ds, plan(start), &aug, OnCorrupt::Fail, prefetch, |l| {
            let mut out = Vec::new();
            while let Some(b) = l.next_batch().expect("no decode errors") {
                out.push(b);
            }
            out
        })
    }

    #[test]
    fn batches_come_in_order_with_epochs_and_resume_at_any_step() {
        let full = all(0, 2);
        assert_eq!(full.len(), 12);
        assert_eq!(
            full.iter().map(|b| (b.step, b.epoch)).collect::<Vec<_>>()[..6],
            [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 2)]
        );
        // a resumed run sees the same batches, bit for bit
        let resumed = all(7, 1);
        assert_eq!(resumed.len(), 5);
        for (a, b) in full[7..].iter().zip(&resumed) {
            assert_eq!(a.step, b.step);
            assert_eq!(a.view1, b.view1);
            assert_eq!(a.view2, b.view2);
        }
    }

    #[test]
    fn prepare_runs_on_the_producer_thread_and_its_result_comes_with_the_batch() {
        let ds = dataset(21);
        let aug = AugmentConfig {
            size: 8,
            ..AugmentConfig::default()
        };
        let consumer = std::thread::current().id();
        let prepare = |b: &mut Batch| {
            let view1 = std::mem::take(&mut b.view1);
            (std::thread::current().id(), b.step, view1)
        };
        let reference = all(0, 2);
        let seen = with_prepared_loader(&ds, plan(0), &aug, OnCorrupt::Fail, 2, &prepare, |l| {
            let mut out = Vec::new();
            while let Some(b) = l.next_prepared().expect("no decode errors") {
                out.push(b);
            }
            out
        });
        assert_eq!(seen.len(), reference.len());
        for ((batch, (thread, step, view1)), expected) in seen.iter().zip(&reference) {
            assert_ne!(*thread, consumer);
            assert_eq!((*step, batch.step), (expected.step, expected.step));
            assert!(batch.view1.is_empty(), "taken by prepare");
            assert_eq!(view1, &expected.view1);
            assert_eq!(batch.view2, expected.view2);
        }
    }

    #[test]
    fn each_epoch_is_a_new_permutation() {
        let (a, b) = (epoch_order(3, 1, 50), epoch_order(3, 2, 50));
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(3, 1, 50));
    }

    #[test]
    fn the_producer_stops_when_the_consumer_leaves_early() {
        let ds = dataset(21);
        let aug = AugmentConfig {
            size: 8,
            ..AugmentConfig::default()
        };
        let first = with_loader(&ds, plan(0), &aug, OnCorrupt::Fail, 1, |l| {
            l.next_batch().expect("ok").map(|b| b.step)
        });
        assert_eq!(first, Some(0));
    }

    /// `inner`, with image `bad` unreadable and every `image` call counted.
    struct Flaky {
        inner: IdxDataset,
        bad: Option<usize>,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Dataset for Flaky {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn channels(&self) -> usize {
            self.inner.channels()
        }
        fn image(&self, index: usize) -> Result<Image, byol_data::DataError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if Some(index) == self.bad {
                return Err(byol_data::DataError::Decode {
                    path: "bad.png".into(),
                    reason: "cut short".into(),
                });
            }
            self.inner.image(index)
        }
        fn label(&self, index: usize) -> Option<u32> {
            self.inner.label(index)
        }
        fn num_classes(&self) -> Option<usize> {
            None
        }
        fn class_names(&self) -> Option<Vec<String>> {
            None
        }
        fn name(&self, index: usize) -> String {
            format!("#{index}")
        }
    }

    fn flaky(n: usize, bad: Option<usize>) -> Flaky {
        Flaky {
            inner: dataset(n),
            bad,
            calls: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    #[test]
    fn a_batch_holds_the_two_views_of_its_images_with_or_without_a_bad_one() {
        let aug = AugmentConfig {
            size: 8,
            ..AugmentConfig::default()
        };
        let order: Vec<usize> = (0..20).rev().collect();
        let p = plan(0);
        let views_of = |ds: &dyn Dataset, indices: &[usize], step| {
            let images: Vec<Image> = indices
                .iter()
                .map(|&i| ds.image(i).expect("readable"))
                .collect();
            let refs: Vec<_> = images.iter().map(Image::as_ref).collect();
            two_views(&refs, &aug, batch_seed(p.seed, 1, step))
        };
        let ds = flaky(20, None);
        let batch = make_batch(&ds, &order, &p, 1, &aug, OnCorrupt::Fail).expect("no bad image");
        assert_eq!((batch.view1, batch.view2), views_of(&ds, &order[4..8], 1));
        assert!(batch.skipped.is_empty() && batch.len == 4);
        // sample 13 (the third of step 1: samples 15, 14, 13, 12) is unreadable
        let ds = flaky(20, Some(13));
        let err = make_batch(&ds, &order, &p, 1, &aug, OnCorrupt::Fail).expect_err("fails");
        assert!(err.to_string().contains("cut short"), "{err}");
        let batch = make_batch(&ds, &order, &p, 1, &aug, OnCorrupt::Skip).expect("skips");
        assert_eq!(batch.len, 3);
        assert_eq!(batch.skipped, vec![("#13".to_string(), err.to_string())]);
        assert_eq!((batch.view1, batch.view2), views_of(&ds, &[15, 14, 12], 1));
    }

    #[test]
    fn the_producer_stays_at_most_prefetch_plus_two_batches_ahead() {
        let aug = AugmentConfig {
            size: 8,
            ..AugmentConfig::default()
        };
        let ds = flaky(21, None);
        for prefetch in [1, 3] {
            ds.calls.store(0, std::sync::atomic::Ordering::SeqCst);
            let made = with_loader(&ds, plan(0), &aug, OnCorrupt::Fail, prefetch, |l| {
                let first = l.next_batch().expect("ok").expect("a batch");
                // the producer fills the channel, makes one more and waits
                std::thread::sleep(Duration::from_millis(300));
                let made = ds.calls.load(std::sync::atomic::Ordering::SeqCst);
                drop(first);
                made
            });
            // the consumer's batch, `prefetch` in the channel, one waiting
            assert!(
                made <= (prefetch + 2) * 4,
                "prefetch {prefetch}: {made} images"
            );
            assert!(
                made > 4,
                "prefetch {prefetch}: the producer made nothing ahead"
            );
        }
    }
}
