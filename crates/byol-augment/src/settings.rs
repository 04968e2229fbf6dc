//! Augmentation settings, read from the `[augment]` section of a run config.

use serde::{Deserialize, Serialize};

use crate::AugmentError;

/// The random transformations of one view, with the probabilities and ranges
/// of the BYOL paper as defaults.
///
/// "[...] random cropping, left-right flip, color jittering, color dropping,
/// Gaussian blurring, and solarization" — with blur applied with probability
/// 1.0 to the first view and 0.1 to the second, and solarization with 0.0
/// and 0.2 [BYOL, Grill et al. 2020, arXiv:2006.07733, Table 6].
///
/// On single-channel images `saturation`, `hue` and `grayscale_p` are no-ops
/// (their random draws are still made, so that seeds give the same stream
/// whatever the channel count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewConfig {
    /// Random resized crop: range of the crop's area as a fraction of the image.
    pub crop_scale: [f32; 2],
    /// Random resized crop: range of the crop's aspect ratio (width / height).
    pub crop_ratio: [f32; 2],
    /// Probability of a horizontal flip.
    pub flip_p: f32,
    /// Probability of colour jitter (its four parts applied in random order).
    pub jitter_p: f32,
    /// Brightness factor drawn in `[max(0, 1 − b), 1 + b]`.
    pub brightness: f32,
    /// Contrast factor drawn in `[max(0, 1 − c), 1 + c]`.
    pub contrast: f32,
    /// Saturation factor drawn in `[max(0, 1 − s), 1 + s]`; no-op on 1 channel.
    pub saturation: f32,
    /// Hue shift drawn in `[−h, h]` turns, `h ≤ 0.5`; no-op on 1 channel.
    pub hue: f32,
    /// Probability of converting to grayscale; no-op on 1 channel.
    pub grayscale_p: f32,
    /// Probability of a gaussian blur.
    pub blur_p: f32,
    /// Range of the blur's σ, in pixels of the output view.
    pub blur_sigma: [f32; 2],
    /// Odd side of the blur kernel; 0 = 10% of the view size, made odd, at least 3.
    pub blur_kernel_size: usize,
    /// Probability of solarisation.
    pub solarize_p: f32,
    /// Pixels (in [0, 1]) at or above this are inverted by solarisation.
    pub solarize_threshold: f32,
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self::view1()
    }
}

impl ViewConfig {
    /// The paper's first view: blur always, never solarised.
    pub fn view1() -> Self {
        Self {
            crop_scale: [0.08, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_p: 0.5,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            grayscale_p: 0.2,
            blur_p: 1.0,
            blur_sigma: [0.1, 2.0],
            blur_kernel_size: 0,
            solarize_p: 0.0,
            solarize_threshold: 0.5,
        }
    }

    /// The paper's second view: blur with probability 0.1, solarised with 0.2.
    pub fn view2() -> Self {
        Self {
            blur_p: 0.1,
            solarize_p: 0.2,
            ..Self::view1()
        }
    }

    /// Checks every value; `prefix` names the section (`augment.view1`).
    ///
    /// # Errors
    ///
    /// [`AugmentError::InvalidConfig`] naming the first bad key.
    pub fn validate(&self, prefix: &str) -> Result<(), AugmentError> {
        let bad = |key: &str, value: String, expected: &str| AugmentError::InvalidConfig {
            key: format!("{prefix}.{key}"),
            value,
            expected: expected.to_string(),
        };
        for (key, p) in [
            ("flip_p", self.flip_p),
            ("jitter_p", self.jitter_p),
            ("grayscale_p", self.grayscale_p),
            ("blur_p", self.blur_p),
            ("solarize_p", self.solarize_p),
            ("solarize_threshold", self.solarize_threshold),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(key, p.to_string(), "a number in [0, 1]"));
            }
        }
        let [lo, hi] = self.crop_scale;
        if !(lo > 0.0 && lo < hi && hi <= 1.0) {
            return Err(bad("crop_scale", format!("{:?}", self.crop_scale), "[min, max] with 0 < min < max <= 1"));
        }
        let [lo, hi] = self.crop_ratio;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(bad("crop_ratio", format!("{:?}", self.crop_ratio), "[min, max] with 0 < min <= max"));
        }
        for (key, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(bad(key, v.to_string(), "a finite number >= 0"));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(bad("hue", self.hue.to_string(), "a number in [0, 0.5]"));
        }
        let [lo, hi] = self.blur_sigma;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(bad("blur_sigma", format!("{:?}", self.blur_sigma), "[min, max] with 0 < min <= max"));
        }
        if self.blur_kernel_size != 0 && self.blur_kernel_size % 2 == 0 {
            return Err(bad(
                "blur_kernel_size",
                self.blur_kernel_size.to_string(),
                "0 (automatic) or an odd number",
            ));
        }
        Ok(())
    }
}

/// Both views, their output size and the normalisation shared by training
/// views and the evaluation transform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Side of the square views, in pixels.
    pub size: usize,
    /// The first view (paper: blur p 1.0, solarize p 0.0).
    pub view1: ViewConfig,
    /// The second view (paper: blur p 0.1, solarize p 0.2).
    pub view2: ViewConfig,
    /// Per-channel mean subtracted after the transforms (one value broadcasts).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by (one value broadcasts).
    pub std: Vec<f32>,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            size: 28,
            view1: ViewConfig::view1(),
            view2: ViewConfig::view2(),
            mean: vec![0.5],
            std: vec![0.5],
        }
    }
}

impl AugmentConfig {
    /// Checks every value; `prefix` names the section (`augment`).
    ///
    /// # Errors
    ///
    /// [`AugmentError::InvalidConfig`] naming the first bad key.
    pub fn validate(&self, prefix: &str) -> Result<(), AugmentError> {
        let bad = |key: &str, value: String, expected: &str| AugmentError::InvalidConfig {
            key: format!("{prefix}.{key}"),
            value,
            expected: expected.to_string(),
        };
        if self.size == 0 {
            return Err(bad("size", "0".into(), "at least 1"));
        }
        if self.mean.is_empty() || self.mean.len() != self.std.len() {
            return Err(bad(
                "mean",
                format!("{:?} with std {:?}", self.mean, self.std),
                "mean and std lists of the same non-zero length",
            ));
        }
        if let Some(s) = self.std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            return Err(bad("std", s.to_string(), "finite values > 0"));
        }
        self.view1.validate(&format!("{prefix}.view1"))?;
        self.view2.validate(&format!("{prefix}.view2"))
    }

    /// Checks that `mean` and `std` fit images of `channels` channels.
    ///
    /// # Errors
    ///
    /// [`AugmentError::InvalidConfig`] on `augment.mean`.
    pub fn check_channels(&self, channels: usize) -> Result<(), AugmentError> {
        if self.mean.len() == 1 || self.mean.len() == channels {
            Ok(())
        } else {
            Err(AugmentError::InvalidConfig {
                key: "augment.mean".into(),
                value: format!("{} values", self.mean.len()),
                expected: format!("1 value or one per channel ({channels}) of the dataset"),
            })
        }
    }
}
