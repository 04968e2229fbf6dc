//! Where a run's networks come from: the built-in ResNets of `[model]`
//! (optionally starting from torchvision weights, `model.init_from`), or an
//! encoder of the caller's through [`byol_model::Encoder`].

use std::path::Path;

use burn::prelude::*;
use byol_model::{Byol, Encoder, ResNet};

use crate::budget::{DataFacts, MemoryPlan};
use crate::{RunConfig, TrainError};

/// Builds the `Byol` pair of a run for `channels`-channel images. Every
/// implementation draws its weights through [`Byol::seeded`], so a run's
/// initial weights depend on its seed alone.
pub(crate) trait ModelSource<B: Backend, E> {
    /// Checks that networks for `channels`-channel images can be built,
    /// before any checkpoint is tried (so that a bad config is reported as
    /// such, not as an unusable checkpoint).
    fn validate(&self, _channels: usize) -> Result<(), TrainError> {
        Ok(())
    }

    /// The memory plan of a run of these networks on data known as
    /// `facts`: an encoder of the caller's has unknown layers, so only what
    /// does not depend on them is counted.
    fn memory_plan(&self, config: &RunConfig, facts: &DataFacts) -> MemoryPlan {
        MemoryPlan::without_encoder(config, facts)
    }

    /// The networks of a fresh run, with any pretrained weights loaded.
    fn fresh(&self, channels: usize, device: &B::Device) -> Result<Byol<B, E>, TrainError>;

    /// Networks of the right shapes whose weights a checkpoint replaces.
    fn skeleton(&self, channels: usize, device: &B::Device) -> Result<Byol<B, E>, TrainError>;
}

/// The built-in ResNets of `config.model`.
pub(crate) struct ResNets<'a> {
    pub(crate) config: &'a RunConfig,
    /// `model.init_from`, checked to be a file (see [`init_from`]).
    pub(crate) init_from: Option<&'a Path>,
}

impl<B: Backend> ModelSource<B, ResNet<B>> for ResNets<'_> {
    fn validate(&self, channels: usize) -> Result<(), TrainError> {
        Ok(self
            .config
            .model
            .encoder_config(channels)
            .validate("model")?)
    }

    fn memory_plan(&self, config: &RunConfig, facts: &DataFacts) -> MemoryPlan {
        MemoryPlan::new(config, facts)
    }

    fn fresh(&self, channels: usize, device: &B::Device) -> Result<Byol<B, ResNet<B>>, TrainError> {
        let model = self.skeleton(channels, device)?;
        let Some(path) = self.init_from else {
            return Ok(model);
        };
        let Byol { mut online, target } = model;
        online.encoder = byol_model::torchvision::load_torchvision(online.encoder, path, device)
            .map_err(TrainError::InitFrom)?;
        tracing::info!(path = %path.display(), "encoder initialised from model.init_from");
        // the target starts as a copy of the online network, loaded weights included
        Ok(Byol { online, target }.update_target(0.0))
    }

    fn skeleton(
        &self,
        channels: usize,
        device: &B::Device,
    ) -> Result<Byol<B, ResNet<B>>, TrainError> {
        <Self as ModelSource<B, ResNet<B>>>::validate(self, channels)?;
        let encoder = self.config.model.encoder_config(channels);
        Ok(Byol::seeded(
            self.config.seed,
            device,
            &self.config.model.heads_config(),
            self.config.train.use_momentum,
            |device| encoder.init(device),
        ))
    }
}

/// An encoder of the caller's: `build(channels, device)` makes a freshly
/// initialised one (called once per network).
pub(crate) struct Custom<'a, F> {
    pub(crate) config: &'a RunConfig,
    pub(crate) build: F,
}

impl<B: Backend, E: Encoder<B>, F: Fn(usize, &B::Device) -> E> ModelSource<B, E> for Custom<'_, F> {
    fn fresh(&self, channels: usize, device: &B::Device) -> Result<Byol<B, E>, TrainError> {
        self.skeleton(channels, device)
    }

    fn skeleton(&self, channels: usize, device: &B::Device) -> Result<Byol<B, E>, TrainError> {
        Ok(Byol::seeded(
            self.config.seed,
            device,
            &self.config.model.heads_config(),
            self.config.train.use_momentum,
            |device| (self.build)(channels, device),
        ))
    }
}

/// `model.init_from` when set, checked to be a file.
///
/// # Errors
///
/// [`TrainError::InvalidConfig`] naming the key when the file is missing.
pub(crate) fn init_from(config: &RunConfig) -> Result<Option<&Path>, TrainError> {
    let path = config.model.init_from.as_path();
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    if !path.is_file() {
        return Err(TrainError::InvalidConfig {
            key: "model.init_from".into(),
            value: path.display().to_string(),
            expected: "an existing safetensors file, or \"\" for fresh weights".into(),
        });
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use byol_model::ResNetConfig;

    fn new_model<B: Backend>(
        config: &RunConfig,
        init_from: Option<&Path>,
    ) -> Result<Byol<B, ResNet<B>>, TrainError> {
        ResNets { config, init_from }.fresh(1, &Default::default())
    }

    /// The eval-mode features of `encoder` on a fixed batch.
    fn features<B: Backend>(encoder: &ResNet<B>) -> Vec<f32> {
        let x = Tensor::<B, 1>::from_floats(
            (0..2 * 28 * 28)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect::<Vec<_>>()
                .as_slice(),
            &Default::default(),
        )
        .reshape([2, 1, 28, 28]);
        encoder.forward(x).into_data().to_vec().expect("f32")
    }

    #[test]
    fn init_from_loads_the_weights_into_online_and_target_encoders() {
        use byol_model::torchvision::{
            TensorValues, apply_torchvision_state, save_torchvision, torchvision_state_dict,
        };
        type A = Autodiff<Flex>;
        let device = Default::default();
        // weights of another seed, with running statistics moved off (0, 1)
        Flex::seed(&device, 99);
        let source = ResNetConfig::small().init::<Flex>(&device);
        let mut state = std::collections::BTreeMap::new();
        for mut t in torchvision_state_dict(&source).expect("batch norm") {
            if let TensorValues::F32(v) = &mut t.values
                && t.name.contains("running")
            {
                v.iter_mut().for_each(|x| *x += 0.25);
            }
            state.insert(t.name.clone(), t);
        }
        let source = apply_torchvision_state(source, &state, "test", &device).expect("own layout");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        save_torchvision(&source, &path).expect("saved");

        let fresh = new_model::<A>(&RunConfig::default(), None).expect("model");
        let mut config = RunConfig::default();
        config.model.init_from = path;
        let model = new_model::<A>(&config, init_from(&config).expect("a file")).expect("model");
        let expected = features(&source);
        assert_ne!(features(&fresh.online.encoder.valid()), expected);
        assert_eq!(features(&model.online.encoder.valid()), expected);
        let target = model.target.as_ref().expect("target");
        assert_eq!(features(&target.encoder.valid()), expected);
    }

    #[test]
    fn init_from_of_another_architecture_names_the_key_and_both_shapes() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let other = ResNetConfig::resnet18()
            .with_stem(byol_model::Stem::Small)
            .with_in_channels(1)
            .init::<Flex>(&device);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r18.safetensors");
        byol_model::torchvision::save_torchvision(&other, &path).expect("saved");
        let mut config = RunConfig::default();
        config.model.init_from = path;
        let Err(err) = new_model::<A>(&config, init_from(&config).expect("a file")) else {
            panic!("ResNet-18 weights should not load into the small encoder");
        };
        let msg = err.to_string();
        assert!(msg.starts_with("model.init_from"), "{msg}");
        assert!(
            msg.contains("conv1.weight")
                && msg.contains("[64, 1, 3, 3]")
                && msg.contains("[32, 1, 3, 3]"),
            "{msg}"
        );
        config.model.init_from = dir.path().join("missing.safetensors");
        let err = init_from(&config).expect_err("no such file");
        assert!(err.to_string().contains("model.init_from"), "{err}");
    }
}
