//! Arbitrary bytes as an IDX images file and as an IDX labels file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = Path::new("fuzz.idx");
    if let Ok(images) = byol_data::parse_idx_images(source, data) {
        // A parsed header must describe exactly the payload.
        assert_eq!(images.pixels.len(), images.len() * images.image_len());
        assert_eq!(images.channels, 1);
        if !images.is_empty() {
            let last = images.image(images.len() - 1);
            assert_eq!(last.pixels.len(), images.height * images.width);
        }
    }
    if let Ok(labels) = byol_data::parse_idx_labels(source, data) {
        assert_eq!(labels.len() + 8, data.len());
    }
});
