//! Datasets made of other datasets: a subset, a concatenation.

use crate::{DataError, Dataset, Image, check_index};

/// Which samples of the inner dataset a [`Subset`] keeps.
#[derive(Debug, Clone)]
enum Indices {
    /// `0..n`.
    First(usize),
    /// Any indices, in this order.
    List(Vec<usize>),
}

/// Some samples of a dataset, in a given order: the first `n`
/// ([`Subset::first`], the `take(n)` of any dataset) or any list of indices
/// ([`Subset::new`]). Sample `i` of the subset is sample `indices[i]` of the
/// inner dataset, with its label and name.
#[derive(Debug, Clone)]
pub struct Subset<D> {
    inner: D,
    indices: Indices,
}

impl<D: Dataset> Subset<D> {
    /// The first `n` samples of `inner` (all of them if it holds fewer).
    pub fn first(inner: D, n: usize) -> Self {
        let n = n.min(inner.len());
        Self {
            inner,
            indices: Indices::First(n),
        }
    }

    /// The samples `indices` of `inner`, in that order (repeats allowed).
    ///
    /// # Errors
    ///
    /// [`DataError::IndexOutOfRange`] for the first index `>= inner.len()`.
    pub fn new(inner: D, indices: Vec<usize>) -> Result<Self, DataError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(DataError::IndexOutOfRange {
                source_name: "subset of a dataset".to_string(),
                index: bad,
                len: inner.len(),
            });
        }
        Ok(Self {
            inner,
            indices: Indices::List(indices),
        })
    }

    /// The dataset the samples come from.
    pub fn into_inner(self) -> D {
        self.inner
    }

    /// Index in the inner dataset of sample `index`.
    ///
    /// # Panics
    ///
    /// When `index >= self.len()`.
    fn inner_index(&self, index: usize) -> usize {
        match &self.indices {
            Indices::First(n) => {
                assert!(index < *n, "subset index {index} out of range ({n})");
                index
            }
            Indices::List(list) => list[index],
        }
    }
}

impl<D: Dataset> Dataset for Subset<D> {
    fn len(&self) -> usize {
        match &self.indices {
            Indices::First(n) => *n,
            Indices::List(list) => list.len(),
        }
    }

    fn channels(&self) -> usize {
        self.inner.channels()
    }

    fn image(&self, index: usize) -> Result<Image, DataError> {
        check_index("subset of a dataset", index, self.len())?;
        self.inner.image(self.inner_index(index))
    }

    fn label(&self, index: usize) -> Option<u32> {
        self.inner.label(self.inner_index(index))
    }

    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }

    fn class_names(&self) -> Option<Vec<String>> {
        self.inner.class_names()
    }

    fn name(&self, index: usize) -> String {
        self.inner.name(self.inner_index(index))
    }

    fn skipped_count(&self) -> usize {
        self.inner.skipped_count()
    }
}

/// Datasets one after the other. All parts must yield the same number of
/// channels; the number of classes is the largest of the parts', the class
/// names those of the first part that has some, and a part without labels
/// gives `None` labels.
pub struct Concat {
    parts: Vec<Box<dyn Dataset>>,
    /// Index of the first sample of each part.
    starts: Vec<usize>,
    len: usize,
}

impl std::fmt::Debug for Concat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Concat")
            .field("parts", &self.parts.len())
            .field("starts", &self.starts)
            .field("len", &self.len)
            .finish()
    }
}

impl Concat {
    /// Concatenates `parts`, in order.
    ///
    /// # Errors
    ///
    /// [`DataError::Incompatible`] when there is no part or the parts differ
    /// in channels.
    pub fn new(parts: Vec<Box<dyn Dataset>>) -> Result<Self, DataError> {
        let Some(first) = parts.first() else {
            return Err(DataError::Incompatible {
                reason: "no dataset to concatenate".to_string(),
            });
        };
        let channels = first.channels();
        if let Some((i, part)) = parts
            .iter()
            .enumerate()
            .find(|(_, p)| p.channels() != channels)
        {
            return Err(DataError::Incompatible {
                reason: format!(
                    "part 0 has {channels} channels but part {i} has {}",
                    part.channels()
                ),
            });
        }
        let mut starts = Vec::with_capacity(parts.len());
        let mut len = 0;
        for part in &parts {
            starts.push(len);
            len += part.len();
        }
        Ok(Self { parts, starts, len })
    }

    /// The part holding sample `index`, and the index within it.
    ///
    /// # Panics
    ///
    /// When `index >= self.len()`.
    fn locate(&self, index: usize) -> (&dyn Dataset, usize) {
        assert!(
            index < self.len,
            "concat index {index} out of range ({})",
            self.len
        );
        // The last part starting at or before `index`; parts may be empty.
        let part = self.starts.partition_point(|&s| s <= index) - 1;
        (&*self.parts[part], index - self.starts[part])
    }
}

impl Dataset for Concat {
    fn len(&self) -> usize {
        self.len
    }

    fn channels(&self) -> usize {
        self.parts[0].channels()
    }

    fn image(&self, index: usize) -> Result<Image, DataError> {
        check_index("concatenation of datasets", index, self.len)?;
        let (part, i) = self.locate(index);
        part.image(i)
    }

    fn label(&self, index: usize) -> Option<u32> {
        let (part, i) = self.locate(index);
        part.label(i)
    }

    fn num_classes(&self) -> Option<usize> {
        self.parts.iter().filter_map(|p| p.num_classes()).max()
    }

    fn class_names(&self) -> Option<Vec<String>> {
        self.parts.iter().find_map(|p| p.class_names())
    }

    fn name(&self, index: usize) -> String {
        let (part, i) = self.locate(index);
        part.name(i)
    }

    fn skipped_count(&self) -> usize {
        self.parts.iter().map(|p| p.skipped_count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IdxDataset, ImageSet};

    fn idx(n: usize, first_pixel: u8, labels: bool, name: &str) -> IdxDataset {
        let pixels = (0..n).map(|i| first_pixel + i as u8).collect();
        let images = ImageSet {
            pixels,
            height: 1,
            width: 1,
            channels: 1,
        };
        let labels = labels.then(|| (0..n as u8).collect());
        IdxDataset::new(images, labels, name).expect("one label per image")
    }

    #[test]
    fn subset_first_keeps_the_first_samples_with_labels_and_names() {
        let s = Subset::first(idx(5, 10, true, "a"), 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s.image(2).expect("in range").pixels, vec![12]);
        assert_eq!((s.label(2), s.name(2)), (Some(2), "a#2".to_string()));
        assert!(matches!(
            s.image(3),
            Err(DataError::IndexOutOfRange {
                index: 3,
                len: 3,
                ..
            })
        ));
        assert_eq!(Subset::first(idx(2, 0, true, "a"), 10).len(), 2);
    }

    #[test]
    fn subset_of_listed_indices_follows_their_order_and_rejects_out_of_range() {
        let s = Subset::new(idx(5, 10, true, "a"), vec![4, 0, 4]).expect("indices < 5");
        let pixels: Vec<u8> = (0..3)
            .map(|i| s.image(i).expect("in range").pixels[0])
            .collect();
        assert_eq!(pixels, vec![14, 10, 14]);
        assert!(matches!(
            Subset::new(idx(5, 0, true, "a"), vec![1, 5]),
            Err(DataError::IndexOutOfRange {
                index: 5,
                len: 5,
                ..
            })
        ));
    }

    #[test]
    fn concat_maps_indices_across_parts_including_empty_ones() {
        let parts: Vec<Box<dyn Dataset>> = vec![
            Box::new(idx(2, 0, true, "a")),
            Box::new(idx(0, 0, true, "empty")),
            Box::new(idx(3, 100, false, "b")),
        ];
        let c = Concat::new(parts).expect("same channels");
        assert_eq!(c.len(), 5);
        let pixels: Vec<u8> = (0..5)
            .map(|i| c.image(i).expect("in range").pixels[0])
            .collect();
        assert_eq!(pixels, vec![0, 1, 100, 101, 102]);
        assert_eq!((c.label(1), c.label(2)), (Some(1), None));
        assert_eq!(c.name(4), "b#2");
        assert!(c.image(5).is_err());
    }

    #[test]
    fn concat_rejects_parts_with_different_channels() {
        let rgb = IdxDataset::new(
            ImageSet {
                pixels: vec![0; 3],
                height: 1,
                width: 1,
                channels: 3,
            },
            None,
            "rgb",
        )
        .expect("unlabelled");
        let parts: Vec<Box<dyn Dataset>> = vec![Box::new(idx(1, 0, false, "g")), Box::new(rgb)];
        assert!(matches!(
            Concat::new(parts),
            Err(DataError::Incompatible { .. })
        ));
        assert!(matches!(
            Concat::new(Vec::new()),
            Err(DataError::Incompatible { .. })
        ));
    }
}
