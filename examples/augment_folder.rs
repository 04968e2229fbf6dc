//! The BYOL views of a folder of images, with `byol-augment` alone.
//!
//! ```sh
//! cargo run --release -p byol-examples --example augment_folder -- ~/photos views/
//! ```
//!
//! reads up to 8 JPEG/PNG images from the folder (class subfolders are
//! fine), draws the two BYOL views of each at 96×96 with the paper's
//! augmentations, and writes `views/N-view1.png` and `views/N-view2.png`.
//! The views are a function of the seed: the same seed gives the same
//! files.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use byol_augment::{AugmentConfig, to_rgb8, two_views};
use byol_data::{Format, Image, OpenOptions, Split};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(folder), Some(out)) = (args.next(), args.next()) else {
        bail!("usage: augment_folder IMAGE_FOLDER OUT_FOLDER");
    };
    let (folder, out) = (PathBuf::from(folder), PathBuf::from(out));
    let dataset = byol_data::open(
        &folder,
        Format::Folder,
        Split::Train,
        &OpenOptions::default(),
    )
    .with_context(|| format!("reading {}", folder.display()))?;
    let n = dataset.len().min(8);
    let images: Vec<Image> = (0..n).map(|i| dataset.image(i)).collect::<Result<_, _>>()?;
    let channels = dataset.channels();
    if channels != 1 && channels != 3 {
        bail!(
            "{}: {channels}-channel images; expected 1 or 3",
            folder.display()
        );
    }
    // the paper's views (random crop, flip, colour jitter, grayscale,
    // blur, solarize) at 96 px, normalised with mean and std 0.5
    let config = AugmentConfig {
        size: 96,
        ..AugmentConfig::default()
    };
    config.validate("augment")?;
    config.check_channels(channels)?;
    let refs: Vec<_> = images.iter().map(Image::as_ref).collect();
    let (view1, view2) = two_views(&refs, &config, 42);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let plane = channels * config.size * config.size;
    for i in 0..n {
        for (name, views) in [("view1", &view1), ("view2", &view2)] {
            let values = &views[i * plane..(i + 1) * plane];
            let rgb = to_rgb8(values, channels, &config.mean, &config.std);
            let path = out.join(format!("{i}-{name}.png"));
            let side = config.size as u32;
            image::RgbImage::from_raw(side, side, rgb)
                .context("a view of size × size RGB pixels")?
                .save(&path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    println!(
        "{} views of {n} images of {} written to {}",
        2 * n,
        folder.display(),
        out.display()
    );
    Ok(())
}
