//! Weighted k-nearest-neighbour classification on cosine similarity.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// Settings of the kNN monitor.
///
/// As lightly's benchmark module (after Wu et al. 2018, "Unsupervised Feature
/// Learning via Non-Parametric Instance Discrimination"): each of the `k`
/// most cosine-similar training samples votes for its class with weight
/// `exp(similarity / temperature)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnConfig {
    /// Neighbours that vote.
    pub k: usize,
    /// Temperature of the vote weights.
    pub temperature: f32,
    /// At most this many training images in the memory bank: a seeded,
    /// class-balanced subset ([`crate::balanced_subset`]) when the split
    /// holds more, so that the bank's memory is bounded by
    /// `bank_size × feature dim` whatever the size of the pretraining set.
    pub bank_size: usize,
}

/// [`KnnConfig::bank_size`] by default: the whole training split of
/// Fashion-MNIST (60,000), CIFAR (50,000) and STL-10 (5,000); 256 MiB of
/// features at 1,024 dimensions.
pub const DEFAULT_BANK_SIZE: usize = 65_536;

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 20,
            temperature: 0.1,
            bank_size: DEFAULT_BANK_SIZE,
        }
    }
}

impl KnnConfig {
    /// Checks the values; `prefix` names the config section in errors.
    ///
    /// # Errors
    ///
    /// [`EvalError::InvalidConfig`] naming the key.
    pub fn validate(&self, prefix: &str) -> Result<(), EvalError> {
        if self.k == 0 {
            return Err(EvalError::InvalidConfig {
                key: format!("{prefix}.k"),
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
        if self.bank_size == 0 {
            return Err(EvalError::InvalidConfig {
                key: format!("{prefix}.bank_size"),
                value: "0".into(),
                expected: "at least 1 training image".into(),
            });
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(EvalError::InvalidConfig {
                key: format!("{prefix}.temperature"),
                value: self.temperature.to_string(),
                expected: "a finite number > 0".into(),
            });
        }
        Ok(())
    }
}

/// Top-1 and top-5 accuracy, as fractions in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnAccuracy {
    /// Fraction of queries whose best-scored class is right.
    pub top1: f64,
    /// Fraction whose right class is among the five best-scored.
    pub top5: f64,
}

/// Classifies each query row by a similarity-weighted vote of its `k` nearest
/// rows of `bank` (cosine similarity), and scores the result.
///
/// # Errors
///
/// [`EvalError::CountMismatch`] when rows and labels disagree,
/// [`EvalError::InvalidConfig`] for a bad `config`.
///
/// # Panics
///
/// When `bank` and `queries` have different feature dimensions.
pub fn knn_classify<B: Backend>(
    bank: Tensor<B, 2>,
    bank_labels: &[u32],
    queries: Tensor<B, 2>,
    query_labels: &[u32],
    config: &KnnConfig,
) -> Result<KnnAccuracy, EvalError> {
    config.validate("eval.knn")?;
    let [n_bank, _] = bank.dims();
    let [n_queries, _] = queries.dims();
    if n_bank != bank_labels.len() {
        return Err(EvalError::CountMismatch {
            what: "kNN memory bank",
            features: n_bank,
            labels: bank_labels.len(),
        });
    }
    if n_queries != query_labels.len() {
        return Err(EvalError::CountMismatch {
            what: "kNN queries",
            features: n_queries,
            labels: query_labels.len(),
        });
    }
    if n_queries == 0 || n_bank == 0 {
        return Ok(KnnAccuracy {
            top1: 0.0,
            top5: 0.0,
        });
    }
    let n_classes = *bank_labels.iter().chain(query_labels).max().unwrap_or(&0) as usize + 1;
    let k = config.k.min(n_bank);
    let selection = TopK::for_device::<B>(&bank.device());
    // [n_bank, dim] -> [dim, n_bank], unit rows
    let bank_t = l2_normalize(bank).transpose();
    let queries = l2_normalize(queries);

    let (mut hits1, mut hits5) = (0usize, 0usize);
    let chunk = (1 << 22) / n_bank.max(1) + 1;
    let mut scores = vec![0f64; n_classes];
    let mut start = 0;
    while start < n_queries {
        let end = (start + chunk).min(n_queries);
        // [rows, n_bank]
        let sim = queries
            .clone()
            .narrow(0, start, end - start)
            .matmul(bank_t.clone());
        let nearest = selection.nearest(sim, k)?;
        for (row, label) in nearest.chunks_exact(k).zip(&query_labels[start..end]) {
            scores.iter_mut().for_each(|s| *s = 0.0);
            for &(similarity, j) in row {
                scores[bank_labels[j] as usize] +=
                    (f64::from(similarity) / f64::from(config.temperature)).exp();
            }
            let right = scores[*label as usize];
            // classes strictly better than the right one; ties count against it
            let better = scores
                .iter()
                .enumerate()
                .filter(|&(c, &s)| c != *label as usize && s >= right)
                .count();
            hits1 += usize::from(better == 0 && right > 0.0);
            hits5 += usize::from(better < 5 && right > 0.0);
        }
        start = end;
    }
    Ok(KnnAccuracy {
        top1: hits1 as f64 / n_queries as f64,
        top5: hits5 as f64 / n_queries as f64,
    })
}

/// Where the `k` nearest bank rows of each query are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopK {
    /// The similarities are read back and selected on the host
    /// (`select_nth`, O(bank) a query): for backends in host memory, where
    /// reading back is a copy.
    Host,
    /// `k` rounds of a row-wise arg-max on the device, each masking the
    /// row it found; only `[rows, k]` similarities and indices come back.
    /// burn's own `topk` sorts on the host on the GPU backends of 0.21
    /// (`burn_backend::ops::sort`), reading the whole matrix back.
    Device,
}

impl TopK {
    /// [`TopK::Host`] for burn's CPU backends (`flex`, `ndarray`), whose
    /// tensors are host memory, else [`TopK::Device`].
    pub fn for_device<B: Backend>(device: &B::Device) -> Self {
        let name = B::name(device).to_lowercase();
        if name.contains("flex") || name.contains("ndarray") {
            Self::Host
        } else {
            Self::Device
        }
    }

    /// The `k` largest `(similarity, bank row)` of each row of `sim`
    /// (`[rows, n_bank]`, `k ≤ n_bank`), `rows × k` of them, row after row,
    /// in no particular order within a row.
    ///
    /// # Errors
    ///
    /// [`EvalError::Data`] when the tensors cannot be read back.
    pub fn nearest<B: Backend>(
        self,
        sim: Tensor<B, 2>,
        k: usize,
    ) -> Result<Vec<(f32, usize)>, EvalError> {
        let [rows, n] = sim.dims();
        let read = |e| EvalError::Data(format!("{e:?}"));
        match self {
            Self::Host => {
                let sim: Vec<f32> = sim.into_data().to_vec::<f32>().map_err(read)?;
                let mut out = Vec::with_capacity(rows * k);
                let mut idx: Vec<usize> = Vec::with_capacity(n);
                for row in sim.chunks_exact(n) {
                    idx.clear();
                    idx.extend(0..n);
                    if k < n {
                        idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
                    }
                    out.extend(idx[..k].iter().map(|&j| (row[j], j)));
                }
                Ok(out)
            }
            Self::Device => {
                let device = sim.device();
                let columns = Tensor::<B, 1, Int>::arange(0..n as i64, &device)
                    .reshape([1, n])
                    .expand([rows, n]);
                let (mut values, mut indices) = (Vec::with_capacity(k), Vec::with_capacity(k));
                let mut sim = sim;
                for _ in 0..k {
                    let (v, i) = sim.clone().max_dim_with_indices(1);
                    let found = columns.clone().equal(i.clone().expand([rows, n]));
                    sim = sim.mask_fill(found, f32::NEG_INFINITY);
                    values.push(v);
                    indices.push(i);
                }
                let values: Vec<f32> = Tensor::cat(values, 1)
                    .into_data()
                    .to_vec::<f32>()
                    .map_err(read)?;
                let indices: Vec<i64> = Tensor::cat(indices, 1)
                    .into_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .map_err(read)?;
                Ok(values
                    .into_iter()
                    .zip(indices)
                    .map(|(v, j)| (v, usize::try_from(j).unwrap_or(usize::MAX)))
                    .collect())
            }
        }
    }
}

/// Rows divided by their L2 norm (rows of zeros stay zero).
fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn t(rows: &[[f32; 2]]) -> Tensor<B, 2> {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::<B, 1>::from_floats(flat.as_slice(), &Default::default()).reshape([rows.len(), 2])
    }

    #[test]
    fn separable_clusters_are_classified_perfectly() {
        let bank = t(&[[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]);
        let queries = t(&[[2.0, 0.0], [0.0, 3.0]]);
        let acc = knn_classify(
            bank,
            &[0, 0, 1, 1],
            queries,
            &[0, 1],
            &KnnConfig {
                k: 2,
                temperature: 0.1,
                ..KnnConfig::default()
            },
        )
        .expect("valid inputs");
        assert_eq!(acc.top1, 1.0);
        assert_eq!(acc.top5, 1.0);
    }

    #[test]
    fn similarity_weighting_beats_majority() {
        // two far neighbours of class 1, one very close neighbour of class 0
        let bank = t(&[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]);
        let queries = t(&[[1.0, 0.05]]);
        let weighted = knn_classify(
            bank.clone(),
            &[0, 1, 1],
            queries.clone(),
            &[0],
            &KnnConfig {
                k: 3,
                temperature: 0.1,
                ..KnnConfig::default()
            },
        )
        .expect("valid");
        assert_eq!(weighted.top1, 1.0);
        // a huge temperature makes the vote a plain majority
        let flat = knn_classify(
            bank,
            &[0, 1, 1],
            queries,
            &[0],
            &KnnConfig {
                k: 3,
                temperature: 1e6,
                ..KnnConfig::default()
            },
        )
        .expect("valid");
        assert_eq!(flat.top1, 0.0);
        assert_eq!(flat.top5, 1.0);
    }

    #[test]
    fn the_device_selection_finds_the_host_selections_neighbours() {
        // distinct similarities: both must pick the same k rows of each
        let (rows, n, k) = (7, 50, 5);
        let values: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.5)
            .collect();
        let sim =
            Tensor::<B, 1>::from_floats(values.as_slice(), &Default::default()).reshape([rows, n]);
        let sorted = |mut v: Vec<(f32, usize)>| {
            for row in v.chunks_mut(k) {
                row.sort_by_key(|&(_, j)| j);
            }
            v
        };
        let host = sorted(TopK::Host.nearest(sim.clone(), k).expect("host"));
        let device = sorted(TopK::Device.nearest(sim, k).expect("device"));
        assert_eq!(host.len(), rows * k);
        assert_eq!(host, device);
        // and they are the largest of each row
        for (r, row) in host.chunks(k).enumerate() {
            let mut all: Vec<f32> = values[r * n..(r + 1) * n].to_vec();
            all.sort_by(|a, b| b.total_cmp(a));
            let least = row.iter().map(|p| p.0).fold(f32::INFINITY, f32::min);
            assert_eq!(least, all[k - 1], "row {r}");
        }
        assert_eq!(TopK::for_device::<B>(&Default::default()), TopK::Host);
    }

    #[test]
    fn count_mismatch_and_bad_k_are_errors() {
        let bank = t(&[[1.0, 0.0]]);
        assert!(matches!(
            knn_classify(
                bank.clone(),
                &[0, 1],
                bank.clone(),
                &[0],
                &KnnConfig::default()
            ),
            Err(EvalError::CountMismatch { .. })
        ));
        let err = knn_classify(
            bank.clone(),
            &[0],
            bank,
            &[0],
            &KnnConfig {
                k: 0,
                temperature: 0.1,
                ..KnnConfig::default()
            },
        )
        .expect_err("k = 0");
        assert!(err.to_string().contains("eval.knn.k"), "{err}");
    }
}
