//! Examples of byol-rs used from Rust, each a cargo example of this
//! package:
//!
//! - `custom_backbone`: BYOL pretraining of an encoder of your own through
//!   [`byol_model::Encoder`] and [`byol_train::pretrain_encoder`]
//!   (`cargo run --release -p byol-examples --example custom_backbone`);
//! - `augment_folder`: the BYOL views of a folder of images with
//!   `byol-augment` alone, written as PNG files
//!   (`cargo run --release -p byol-examples --example augment_folder -- DIR OUT`).
