//! Augmentation settings: the `[augment]` section of a run config, with the
//! paper's values as defaults and range checks that name the offending key.

use std::fmt::Display;

use serde::{Deserialize, Deserializer, Serialize};

use crate::AugmentError;

/// The random transformations of one BYOL view, with the probabilities and
/// ranges of the paper as defaults.
///
/// "random cropping [...] optional left-right flip [...] color jittering
/// [...] color dropping [...] Gaussian blurring [...] solarization", with
/// blur applied with probability 1.0 to the first view and 0.1 to the
/// second, solarization with 0.0 and 0.2
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, Table 6 and appendix B].
///
/// On single-channel images `saturation`, `hue` and `grayscale_p` are
/// no-ops; their random numbers are still drawn, so a seed gives the same
/// crops and flips whatever those settings.
///
/// Deserialised on its own, a missing key takes the value of
/// [`ViewConfig::view1`] (= `Default`). Inside [`AugmentConfig`], a missing
/// key of `view2` takes the value of [`ViewConfig::view2`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewConfig {
    /// Random resized crop: range of the crop's area as a fraction of the
    /// image's, `0 < min < max <= 1` (paper: `[0.08, 1.0]`).
    pub crop_scale: [f32; 2],
    /// Random resized crop: range of the crop's aspect ratio (width / height),
    /// drawn log-uniformly, `0 < min <= max` (paper: `[3/4, 4/3]`).
    pub crop_ratio: [f32; 2],
    /// Probability of a horizontal (left-right) flip.
    pub flip_p: f32,
    /// Probability of colour jitter; its four parts are then applied in a
    /// random order.
    pub jitter_p: f32,
    /// Brightness: the image is multiplied by a factor drawn in
    /// `[max(0, 1 - b), 1 + b]`.
    pub brightness: f32,
    /// Contrast: the image is blended with the mean of its grayscale version
    /// by a factor drawn in `[max(0, 1 - c), 1 + c]`.
    pub contrast: f32,
    /// Saturation: the image is blended with its grayscale version by a
    /// factor drawn in `[max(0, 1 - s), 1 + s]`. No-op on one channel.
    pub saturation: f32,
    /// Hue: the hue is rotated by a shift drawn in `[-h, h]` of a full turn,
    /// `0 <= h <= 0.5`. No-op on one channel.
    pub hue: f32,
    /// Probability of converting to grayscale (ITU-R 601-2 luma copied to the
    /// three channels). No-op on one channel.
    pub grayscale_p: f32,
    /// Probability of a gaussian blur.
    pub blur_p: f32,
    /// Range of the blur's standard deviation, in pixels of the output view,
    /// `0 < min <= max`.
    pub blur_sigma: [f32; 2],
    /// Odd side of the blur kernel; 0 = automatic: 10% of the view's side,
    /// rounded to an odd number, at least 3 (23 for 224, 3 for 28).
    pub blur_kernel_size: usize,
    /// Probability of solarisation.
    pub solarize_p: f32,
    /// Solarisation inverts (`x -> 1 - x`) the values at or above this
    /// threshold, in `[0, 1]` pixel units.
    pub solarize_threshold: f32,
}

impl Default for ViewConfig {
    /// [`ViewConfig::view1`].
    fn default() -> Self {
        Self::view1()
    }
}

impl ViewConfig {
    /// The paper's first view: blur always, never solarised
    /// [BYOL, Grill et al. 2020, arXiv:2006.07733, Table 6].
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

    /// The paper's second view: blur with probability 0.1, solarised with
    /// probability 0.2 [BYOL, Grill et al. 2020, arXiv:2006.07733, Table 6].
    pub fn view2() -> Self {
        Self {
            blur_p: 0.1,
            solarize_p: 0.2,
            ..Self::view1()
        }
    }

    /// Checks every value against its range; `prefix` names the section,
    /// e.g. `augment.view2`, so that errors name the full key.
    ///
    /// # Errors
    ///
    /// [`AugmentError::InvalidConfig`] naming the first bad key, its value
    /// and the accepted range.
    pub fn validate(&self, prefix: &str) -> Result<(), AugmentError> {
        let bad = |key: &str, value: &dyn Display, expected: &str| AugmentError::InvalidConfig {
            key: format!("{prefix}.{key}"),
            value: value.to_string(),
            expected: expected.to_string(),
        };
        for (key, p) in [
            ("flip_p", self.flip_p),
            ("jitter_p", self.jitter_p),
            ("grayscale_p", self.grayscale_p),
            ("blur_p", self.blur_p),
            ("solarize_p", self.solarize_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(key, &p, "a probability in [0, 1]"));
            }
        }
        let [lo, hi] = self.crop_scale;
        if !(lo > 0.0 && lo < hi && hi <= 1.0) {
            return Err(bad(
                "crop_scale",
                &Pair(self.crop_scale),
                "[min, max] with 0 < min < max <= 1",
            ));
        }
        let [lo, hi] = self.crop_ratio;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(bad(
                "crop_ratio",
                &Pair(self.crop_ratio),
                "[min, max] with 0 < min <= max, finite",
            ));
        }
        for (key, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(bad(key, &v, "a finite number >= 0"));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(bad("hue", &self.hue, "a number in [0, 0.5]"));
        }
        let [lo, hi] = self.blur_sigma;
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(bad(
                "blur_sigma",
                &Pair(self.blur_sigma),
                "[min, max] with 0 < min <= max, finite",
            ));
        }
        if self.blur_kernel_size.is_multiple_of(2) && self.blur_kernel_size != 0 {
            return Err(bad(
                "blur_kernel_size",
                &self.blur_kernel_size,
                "0 (automatic) or an odd number",
            ));
        }
        if !(0.0..=1.0).contains(&self.solarize_threshold) {
            return Err(bad(
                "solarize_threshold",
                &self.solarize_threshold,
                "a number in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// Both BYOL views, their output size and the normalisation shared by the
/// training views and the evaluation transform
/// [BYOL, Grill et al. 2020, arXiv:2006.07733, appendix B].
///
/// A missing key takes its default; a missing key inside `view1` or `view2`
/// takes the value of [`ViewConfig::view1`] or [`ViewConfig::view2`]
/// respectively, so that `[augment.view2] blur_p = 0.5` keeps view 2's
/// solarisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Side of the square views and of the evaluation transform, in pixels.
    pub size: usize,
    /// The first view (paper: blur p 1.0, solarize p 0.0).
    #[serde(deserialize_with = "view1_over_defaults")]
    pub view1: ViewConfig,
    /// The second view (paper: blur p 0.1, solarize p 0.2).
    #[serde(deserialize_with = "view2_over_defaults")]
    pub view2: ViewConfig,
    /// Evaluation transform: the shorter side is resized to this before a
    /// centre crop of `size` (torchvision's `Resize` + `CenterCrop`);
    /// 0 = `size`, the largest centred square.
    pub eval_resize: usize,
    /// Per-channel mean subtracted last; one value broadcasts to all
    /// channels.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by last, `> 0`; one value
    /// broadcasts to all channels.
    pub std: Vec<f32>,
}

impl Default for AugmentConfig {
    /// Size 28, the paper's two views, mean and std `[0.5]`.
    fn default() -> Self {
        Self {
            size: 28,
            view1: ViewConfig::view1(),
            view2: ViewConfig::view2(),
            eval_resize: 0,
            mean: vec![0.5],
            std: vec![0.5],
        }
    }
}

impl AugmentConfig {
    /// Checks every value; `prefix` names the section (`augment`), the views
    /// are checked as `{prefix}.view1` and `{prefix}.view2`.
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
        if self.eval_resize != 0 && self.eval_resize < self.size {
            return Err(bad(
                "eval_resize",
                self.eval_resize.to_string(),
                &format!("0 or at least size ({})", self.size),
            ));
        }
        if self.mean.is_empty() {
            return Err(bad("mean", "[]".into(), "at least one value"));
        }
        if self.std.len() != self.mean.len() {
            return Err(bad(
                "std",
                format!("{} values", self.std.len()),
                &format!("as many values as mean ({})", self.mean.len()),
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(bad("mean", m.to_string(), "finite values"));
        }
        if let Some(s) = self.std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            return Err(bad("std", s.to_string(), "finite values > 0"));
        }
        self.view1.validate(&format!("{prefix}.view1"))?;
        self.view2.validate(&format!("{prefix}.view2"))
    }

    /// The evaluation transform of these settings.
    pub fn eval_transform(&self) -> crate::EvalTransform {
        crate::EvalTransform {
            size: self.size,
            resize: self.eval_resize,
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }

    /// Checks that `mean` and `std` fit images of `channels` channels: one
    /// value each, or one per channel. Errors name `augment.mean` or
    /// `augment.std`.
    ///
    /// # Errors
    ///
    /// [`AugmentError::InvalidConfig`] when a list has another length.
    pub fn check_channels(&self, channels: usize) -> Result<(), AugmentError> {
        for (key, list) in [("augment.mean", &self.mean), ("augment.std", &self.std)] {
            if list.len() != 1 && list.len() != channels {
                return Err(AugmentError::InvalidConfig {
                    key: key.into(),
                    value: format!("{} values", list.len()),
                    expected: format!("1 value or one per channel of the images ({channels})"),
                });
            }
        }
        Ok(())
    }
}

/// Displays `[a, b]` as written in a config file.
struct Pair([f32; 2]);

impl Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}]", self.0[0], self.0[1])
    }
}

/// A view as written in a config file: only the keys present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialView {
    crop_scale: Option<[f32; 2]>,
    crop_ratio: Option<[f32; 2]>,
    flip_p: Option<f32>,
    jitter_p: Option<f32>,
    brightness: Option<f32>,
    contrast: Option<f32>,
    saturation: Option<f32>,
    hue: Option<f32>,
    grayscale_p: Option<f32>,
    blur_p: Option<f32>,
    blur_sigma: Option<[f32; 2]>,
    blur_kernel_size: Option<usize>,
    solarize_p: Option<f32>,
    solarize_threshold: Option<f32>,
}

impl PartialView {
    /// The keys present, the others taken from `base`. Written without `..`
    /// on either side so that a new field cannot be forgotten.
    fn over(self, base: ViewConfig) -> ViewConfig {
        let PartialView {
            crop_scale,
            crop_ratio,
            flip_p,
            jitter_p,
            brightness,
            contrast,
            saturation,
            hue,
            grayscale_p,
            blur_p,
            blur_sigma,
            blur_kernel_size,
            solarize_p,
            solarize_threshold,
        } = self;
        ViewConfig {
            crop_scale: crop_scale.unwrap_or(base.crop_scale),
            crop_ratio: crop_ratio.unwrap_or(base.crop_ratio),
            flip_p: flip_p.unwrap_or(base.flip_p),
            jitter_p: jitter_p.unwrap_or(base.jitter_p),
            brightness: brightness.unwrap_or(base.brightness),
            contrast: contrast.unwrap_or(base.contrast),
            saturation: saturation.unwrap_or(base.saturation),
            hue: hue.unwrap_or(base.hue),
            grayscale_p: grayscale_p.unwrap_or(base.grayscale_p),
            blur_p: blur_p.unwrap_or(base.blur_p),
            blur_sigma: blur_sigma.unwrap_or(base.blur_sigma),
            blur_kernel_size: blur_kernel_size.unwrap_or(base.blur_kernel_size),
            solarize_p: solarize_p.unwrap_or(base.solarize_p),
            solarize_threshold: solarize_threshold.unwrap_or(base.solarize_threshold),
        }
    }
}

fn view1_over_defaults<'de, D: Deserializer<'de>>(d: D) -> Result<ViewConfig, D::Error> {
    Ok(PartialView::deserialize(d)?.over(ViewConfig::view1()))
}

fn view2_over_defaults<'de, D: Deserializer<'de>>(d: D) -> Result<ViewConfig, D::Error> {
    Ok(PartialView::deserialize(d)?.over(ViewConfig::view2()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(cfg: &AugmentConfig) -> String {
        cfg.validate("augment")
            .expect_err("the config should be rejected")
            .to_string()
    }

    fn with_view2(view2: ViewConfig) -> AugmentConfig {
        AugmentConfig {
            view2,
            ..AugmentConfig::default()
        }
    }

    #[test]
    fn defaults_are_the_papers_table_6_values() {
        let (v1, v2) = (ViewConfig::view1(), ViewConfig::view2());
        assert_eq!(ViewConfig::default(), v1);
        assert_eq!(
            (v1.crop_scale, v1.crop_ratio),
            ([0.08, 1.0], [0.75, 4.0 / 3.0])
        );
        assert_eq!((v1.flip_p, v1.jitter_p, v1.grayscale_p), (0.5, 0.8, 0.2));
        assert_eq!(
            (v1.brightness, v1.contrast, v1.saturation, v1.hue),
            (0.4, 0.4, 0.2, 0.1)
        );
        assert_eq!((v1.blur_p, v2.blur_p), (1.0, 0.1));
        assert_eq!((v1.solarize_p, v2.solarize_p), (0.0, 0.2));
        assert_eq!((v1.blur_sigma, v1.blur_kernel_size), ([0.1, 2.0], 0));
        assert_eq!(v1.solarize_threshold, 0.5);
        let a = AugmentConfig::default();
        assert_eq!(
            (a.size, a.mean.as_slice(), a.std.as_slice()),
            (28, &[0.5][..], &[0.5][..])
        );
        assert_eq!((&a.view1, &a.view2), (&v1, &v2));
    }

    #[test]
    fn defaults_pass_validation() {
        AugmentConfig::default()
            .validate("augment")
            .expect("defaults should be valid");
    }

    #[test]
    fn crop_scale_with_min_not_below_max_is_rejected_naming_the_key() {
        for scale in [[0.9, 0.5], [0.5, 0.5]] {
            let msg = message(&with_view2(ViewConfig {
                crop_scale: scale,
                ..ViewConfig::view2()
            }));
            assert!(msg.contains("`augment.view2.crop_scale`"), "{msg}");
            assert!(msg.contains(&Pair(scale).to_string()), "{msg}");
            assert!(msg.contains("0 < min < max <= 1"), "{msg}");
        }
        for scale in [[0.0, 1.0], [0.5, 1.5]] {
            let msg = message(&with_view2(ViewConfig {
                crop_scale: scale,
                ..ViewConfig::view2()
            }));
            assert!(msg.contains("augment.view2.crop_scale"), "{msg}");
        }
    }

    #[test]
    fn probabilities_outside_unit_interval_are_rejected_naming_the_key() {
        type Set = fn(&mut ViewConfig, f32);
        let fields: [(&str, Set); 5] = [
            ("flip_p", |v, p| v.flip_p = p),
            ("jitter_p", |v, p| v.jitter_p = p),
            ("grayscale_p", |v, p| v.grayscale_p = p),
            ("blur_p", |v, p| v.blur_p = p),
            ("solarize_p", |v, p| v.solarize_p = p),
        ];
        for (key, set) in fields {
            for p in [1.5, -0.1, f32::NAN] {
                let mut view = ViewConfig::view2();
                set(&mut view, p);
                let msg = message(&with_view2(view));
                assert!(msg.contains(&format!("`augment.view2.{key}`")), "{msg}");
                assert!(msg.contains("[0, 1]"), "{msg}");
            }
        }
    }

    #[test]
    fn negative_brightness_is_rejected_naming_the_key() {
        let cfg = AugmentConfig {
            view1: ViewConfig {
                brightness: -0.1,
                ..ViewConfig::view1()
            },
            ..AugmentConfig::default()
        };
        let msg = message(&cfg);
        assert!(msg.contains("`augment.view1.brightness`"), "{msg}");
        assert!(msg.contains("-0.1"), "{msg}");
    }

    #[test]
    fn other_out_of_range_values_are_rejected_naming_the_key() {
        let v = ViewConfig::view1;
        let cases = [
            (
                ViewConfig {
                    crop_ratio: [1.5, 1.0],
                    ..v()
                },
                "crop_ratio",
            ),
            (
                ViewConfig {
                    crop_ratio: [0.0, 1.0],
                    ..v()
                },
                "crop_ratio",
            ),
            (
                ViewConfig {
                    contrast: f32::INFINITY,
                    ..v()
                },
                "contrast",
            ),
            (
                ViewConfig {
                    saturation: -1.0,
                    ..v()
                },
                "saturation",
            ),
            (ViewConfig { hue: 0.6, ..v() }, "hue"),
            (ViewConfig { hue: -0.1, ..v() }, "hue"),
            (
                ViewConfig {
                    blur_sigma: [0.0, 1.0],
                    ..v()
                },
                "blur_sigma",
            ),
            (
                ViewConfig {
                    blur_sigma: [2.0, 1.0],
                    ..v()
                },
                "blur_sigma",
            ),
            (
                ViewConfig {
                    blur_kernel_size: 4,
                    ..v()
                },
                "blur_kernel_size",
            ),
            (
                ViewConfig {
                    solarize_threshold: 1.5,
                    ..v()
                },
                "solarize_threshold",
            ),
        ];
        for (view, key) in cases {
            let msg = message(&with_view2(view));
            assert!(msg.contains(&format!("`augment.view2.{key}`")), "{msg}");
        }
        let edge = ViewConfig {
            crop_ratio: [1.0, 1.0],
            blur_sigma: [1.0, 1.0],
            blur_kernel_size: 5,
            hue: 0.5,
            brightness: 0.0,
            ..v()
        };
        edge.validate("augment.view1")
            .expect("edge values should be valid");
    }

    #[test]
    fn size_mean_and_std_are_checked() {
        let d = AugmentConfig::default;
        let cases = [
            (AugmentConfig { size: 0, ..d() }, "`augment.size`"),
            (
                AugmentConfig {
                    mean: vec![],
                    std: vec![],
                    ..d()
                },
                "`augment.mean`",
            ),
            (
                AugmentConfig {
                    std: vec![0.5, 0.5],
                    ..d()
                },
                "`augment.std`",
            ),
            (
                AugmentConfig {
                    std: vec![0.0],
                    ..d()
                },
                "`augment.std`",
            ),
            (
                AugmentConfig {
                    mean: vec![f32::NAN],
                    ..d()
                },
                "`augment.mean`",
            ),
        ];
        for (cfg, key) in cases {
            let msg = message(&cfg);
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn check_channels_accepts_one_value_or_one_per_channel() {
        let three = AugmentConfig {
            mean: vec![0.4, 0.5, 0.6],
            std: vec![0.2, 0.2, 0.2],
            ..AugmentConfig::default()
        };
        assert!(three.check_channels(3).is_ok());
        let err = three
            .check_channels(1)
            .expect_err("3 means for 1 channel")
            .to_string();
        assert!(err.contains("`augment.mean`"), "{err}");
        assert!(AugmentConfig::default().check_channels(1).is_ok());
        assert!(AugmentConfig::default().check_channels(3).is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected_at_every_level() {
        for text in [
            "sizee = 32\n",
            "[view1]\nblurr_p = 0.1\n",
            "[view2]\ncrop = [0.1, 1.0]\n",
        ] {
            let err = toml::from_str::<AugmentConfig>(text)
                .expect_err(text)
                .to_string();
            assert!(err.contains("unknown field"), "{err}");
        }
        let err = toml::from_str::<ViewConfig>("flip = 0.5\n")
            .expect_err("flip is not a key")
            .to_string();
        assert!(err.contains("unknown field `flip`"), "{err}");
    }

    #[test]
    fn missing_keys_keep_the_defaults_of_their_own_view() {
        let empty: AugmentConfig = toml::from_str("").expect("empty text should parse");
        assert_eq!(empty, AugmentConfig::default());
        let cfg: AugmentConfig = toml::from_str(
            "size = 32\nmean = [0.1, 0.2, 0.3]\nstd = [1.0, 1.0, 1.0]\n\
             [view1]\nflip_p = 0.0\n[view2]\nblur_p = 0.5\n",
        )
        .expect("should parse");
        assert_eq!(cfg.size, 32);
        assert_eq!(cfg.mean, vec![0.1, 0.2, 0.3]);
        assert_eq!(
            cfg.view1,
            ViewConfig {
                flip_p: 0.0,
                ..ViewConfig::view1()
            }
        );
        // view 2 keeps its own solarize_p = 0.2, not view 1's 0.0
        assert_eq!(
            cfg.view2,
            ViewConfig {
                blur_p: 0.5,
                ..ViewConfig::view2()
            }
        );
        let alone: ViewConfig = toml::from_str("hue = 0.0\n").expect("should parse");
        assert_eq!(
            alone,
            ViewConfig {
                hue: 0.0,
                ..ViewConfig::view1()
            }
        );
    }

    #[test]
    fn serialised_config_reads_back_equal() {
        let cfg = AugmentConfig {
            size: 16,
            view2: ViewConfig {
                crop_scale: [0.2, 0.9],
                blur_kernel_size: 5,
                solarize_threshold: 0.25,
                ..ViewConfig::view2()
            },
            ..AugmentConfig::default()
        };
        let text = toml::to_string(&cfg).expect("should serialise");
        let back: AugmentConfig = toml::from_str(&text).expect("should read back");
        assert_eq!(back, cfg);
    }
}
