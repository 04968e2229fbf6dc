//! The progress bars of long work (pretraining, data scans, evaluation),
//! all in one style.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps drawn with an indicatif `template`, or a hidden
/// one when `show` is false (`--no-progress`). indicatif also hides bars
/// by itself when stderr is not a terminal.
pub fn bar(show: bool, len: usize, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    ProgressBar::new(len as u64).with_style(style(template))
}

/// The bars' style: `template`, or indicatif's default where the template
/// does not parse.
pub fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
