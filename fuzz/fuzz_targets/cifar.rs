//! Arbitrary bytes as a CIFAR-10 file and as a CIFAR-100 file (fine and
//! coarse labels).
#![no_main]

use std::path::Path;

use byol_data::{Cifar100Labels, CifarKind, parse_cifar};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [
        CifarKind::Cifar10,
        CifarKind::Cifar100(Cifar100Labels::Fine),
        CifarKind::Cifar100(Cifar100Labels::Coarse),
    ] {
        if let Ok(records) = parse_cifar(Path::new("fuzz.bin"), data, kind) {
            let labels = records.labels.expect("CIFAR records are labelled");
            assert_eq!(labels.len() * kind.record_len(), data.len());
            assert_eq!(records.images.len(), labels.len());
            assert!(labels.iter().all(|&l| (l as usize) < kind.num_classes()));
        }
    }
});
