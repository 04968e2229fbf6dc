//! Arbitrary bytes as an STL-10 images file with or without a labels file.
//!
//! Layout of the input: byte 0 selects labels (odd) or none (even); bytes
//! 1..3 are the labels length `n` (little-endian u16); then `n` label bytes;
//! the rest is the images file.
#![no_main]

use std::path::Path;

use byol_data::parse_stl10;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[flag, lo, hi], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let n = usize::from(u16::from_le_bytes([lo, hi])).min(rest.len());
    let (labels, images) = rest.split_at(n);
    let labels = (flag % 2 == 1).then_some((Path::new("fuzz_y.bin"), labels));
    if let Ok(records) = parse_stl10(Path::new("fuzz_X.bin"), images, labels) {
        assert_eq!(records.images.len() * 3 * 96 * 96, images.len());
        if let Some(l) = records.labels {
            assert_eq!(l.len(), records.images.len());
            assert!(l.iter().all(|&v| v < 10));
        }
    }
});
