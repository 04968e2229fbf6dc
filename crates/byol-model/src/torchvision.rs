//! The encoder's weights under torchvision's names, in safetensors files:
//! export for PyTorch users, import to start pretraining from a torchvision
//! checkpoint.
//!
//! [`ResNet`] is laid out as torchvision's `ResNet`, so the mapping is one
//! to one: stage `i` is `layer{i+1}`, block `j` of it `layer{i+1}.{j}`,
//! with `conv1`/`bn1`/`conv2`/`bn2`(/`conv3`/`bn3`) and the shortcut's
//! `downsample.0` (1×1 convolution) and `downsample.1` (BatchNorm). A
//! BatchNorm's γ is `weight`, β `bias`, then `running_mean`, `running_var`
//! and `num_batches_tracked` (an `int64` scalar that torchvision's
//! `BatchNorm2d` only reads when its momentum is `None`; exported as 0).
//! Shapes are PyTorch's: convolutions `[out, in, kh, kw]`, everything else
//! `[channels]`. There is no `fc`: `torchvision.models.resnet18()` loads an
//! export with `load_state_dict(state, strict=False)` and misses only
//! `fc.weight` and `fc.bias`.
//!
//! The evaluation-mode arithmetic is the same in both libraries (BatchNorm
//! ε = 1e-5, running statistics; the running variance is tracked unbiased,
//! as PyTorch does, see [`crate::batch_norm`]), so the same input gives the
//! same features up to float rounding.
//!
//! Only `norm = batch` encoders have this layout; the others are refused
//! with [`ModelError::UnsupportedNorm`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Param, RunningState};
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::ModelError;
use crate::block::Block;
use crate::norm::Norm;
use crate::resnet::ResNet;

/// The values of one exported tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValues {
    /// 32-bit floats (weights, biases, running statistics).
    F32(Vec<f32>),
    /// 64-bit integers (`num_batches_tracked`).
    I64(Vec<i64>),
}

/// One tensor of a state dict: name, PyTorch shape and values in row-major
/// order.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// torchvision's key, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    /// Shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// Values, `shape.iter().product()` of them.
    pub values: TensorValues,
}

/// A layer of the encoder that holds weights, as the walk meets it.
enum Layer<'a, B: Backend> {
    Conv(&'a mut Conv2d<B>),
    Norm(&'a mut Norm<B>),
}

/// Calls `f` with torchvision's name prefix of every weighted layer of
/// `net`, in torchvision's `state_dict` order.
fn walk<B: Backend>(
    net: &mut ResNet<B>,
    f: &mut impl FnMut(&str, Layer<'_, B>) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    f("conv1", Layer::Conv(&mut net.conv1))?;
    f("bn1", Layer::Norm(&mut net.bn1))?;
    for (i, stage) in net.stages.iter_mut().enumerate() {
        for (j, block) in stage.blocks.iter_mut().enumerate() {
            let p = format!("layer{}.{j}", i + 1);
            let downsample = match block {
                Block::Basic(b) => {
                    f(&format!("{p}.conv1"), Layer::Conv(&mut b.conv1))?;
                    f(&format!("{p}.bn1"), Layer::Norm(&mut b.bn1))?;
                    f(&format!("{p}.conv2"), Layer::Conv(&mut b.conv2))?;
                    f(&format!("{p}.bn2"), Layer::Norm(&mut b.bn2))?;
                    &mut b.downsample
                }
                Block::Bottleneck(b) => {
                    f(&format!("{p}.conv1"), Layer::Conv(&mut b.conv1))?;
                    f(&format!("{p}.bn1"), Layer::Norm(&mut b.bn1))?;
                    f(&format!("{p}.conv2"), Layer::Conv(&mut b.conv2))?;
                    f(&format!("{p}.bn2"), Layer::Norm(&mut b.bn2))?;
                    f(&format!("{p}.conv3"), Layer::Conv(&mut b.conv3))?;
                    f(&format!("{p}.bn3"), Layer::Norm(&mut b.bn3))?;
                    &mut b.downsample
                }
            };
            if let Some(d) = downsample {
                f(&format!("{p}.downsample.0"), Layer::Conv(&mut d.conv))?;
                f(&format!("{p}.downsample.1"), Layer::Norm(&mut d.bn))?;
            }
        }
    }
    Ok(())
}

fn norm_name<B: Backend>(norm: &Norm<B>) -> &'static str {
    match norm {
        Norm::Batch(_) => "batch",
        Norm::Group(_) => "group_ws",
        Norm::Identity(_) => "none",
    }
}

fn batch_norm_of<B: Backend>(norm: &mut Norm<B>) -> Result<&mut BatchNorm<B>, ModelError> {
    match norm {
        Norm::Batch(bn) => Ok(bn),
        other => Err(ModelError::UnsupportedNorm {
            norm: norm_name(other),
        }),
    }
}

fn floats<B: Backend, const D: usize>(
    name: String,
    tensor: Tensor<B, D>,
) -> Result<NamedTensor, ModelError> {
    let shape = tensor.dims().to_vec();
    let values = tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| ModelError::Data(format!("{name}: {e:?}")))?;
    Ok(NamedTensor {
        name,
        shape,
        values: TensorValues::F32(values),
    })
}

/// The encoder's tensors under torchvision's names and shapes, in
/// torchvision's `state_dict` order (without `fc`).
///
/// # Errors
///
/// [`ModelError::UnsupportedNorm`] for an encoder whose normalisation is
/// not BatchNorm; [`ModelError::Data`] if a tensor cannot be read back from
/// the device.
pub fn torchvision_state_dict<B: Backend>(
    encoder: &ResNet<B>,
) -> Result<Vec<NamedTensor>, ModelError> {
    // the walk takes `&mut` for the import; a clone shares the tensors and
    // is only read here. burn initialises parameters lazily and the clone
    // of a parameter not yet used would draw its own values: materialise
    // the encoder's own first
    crate::materialize(encoder);
    let mut net = encoder.clone();
    let mut out = Vec::new();
    walk(&mut net, &mut |prefix, layer| {
        match layer {
            Layer::Conv(conv) => {
                out.push(floats(format!("{prefix}.weight"), conv.weight.val())?);
                if let Some(bias) = &conv.bias {
                    out.push(floats(format!("{prefix}.bias"), bias.val())?);
                }
            }
            Layer::Norm(norm) => {
                let bn = batch_norm_of(norm)?;
                out.push(floats(format!("{prefix}.weight"), bn.gamma.val())?);
                out.push(floats(format!("{prefix}.bias"), bn.beta.val())?);
                out.push(floats(
                    format!("{prefix}.running_mean"),
                    bn.running_mean.value_sync(),
                )?);
                out.push(floats(
                    format!("{prefix}.running_var"),
                    bn.running_var.value_sync(),
                )?);
                out.push(NamedTensor {
                    name: format!("{prefix}.num_batches_tracked"),
                    shape: Vec::new(),
                    values: TensorValues::I64(vec![0]),
                });
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// What the safetensors metadata of an export says about the encoder, so
/// that a reader can rebuild it: `stem` (`imagenet`, `cifar`, `small` or
/// `other`), `in_channels`, `blocks` (per stage, comma-separated), `block`
/// (`basic` or `bottleneck`), `widths` (planes per stage) and `output_dim`.
pub fn architecture_metadata<B: Backend>(encoder: &ResNet<B>) -> BTreeMap<String, String> {
    let [out, in_channels, kernel, _] = encoder.conv1.weight.dims();
    let stem = match (kernel, encoder.conv1.stride[0], encoder.maxpool.is_some()) {
        (7, 2, true) => "imagenet",
        (3, 1, false) => "cifar",
        (3, 2, false) => "small",
        _ => "other",
    };
    let join = |v: Vec<usize>| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let block = match encoder.stages.first().and_then(|s| s.blocks.first()) {
        Some(Block::Bottleneck(_)) => "bottleneck",
        _ => "basic",
    };
    let mut width = out;
    let widths = encoder
        .stages
        .iter()
        .enumerate()
        .map(|(i, _)| {
            if i > 0 {
                width *= 2;
            }
            width
        })
        .collect();
    BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("stem".to_string(), stem.to_string()),
        ("in_channels".to_string(), in_channels.to_string()),
        (
            "blocks".to_string(),
            join(encoder.stages.iter().map(|s| s.blocks.len()).collect()),
        ),
        ("block".to_string(), block.to_string()),
        ("widths".to_string(), join(widths)),
        ("output_dim".to_string(), encoder.output_dim.to_string()),
    ])
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes the encoder as a safetensors file with torchvision's keys (see
/// the [module docs](self)) and [`architecture_metadata`].
///
/// # Errors
///
/// As [`torchvision_state_dict`], and [`ModelError::Io`] naming the file
/// when it cannot be written.
pub fn save_torchvision<B: Backend>(encoder: &ResNet<B>, path: &Path) -> Result<(), ModelError> {
    let tensors = torchvision_state_dict(encoder)?;
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|t| {
            let (dtype, data) = match t.values {
                TensorValues::F32(v) => {
                    (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                TensorValues::I64(v) => {
                    (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
            };
            (t.name, dtype, t.shape, data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|view| (name.as_str(), view))
                .map_err(|e| io_err(path, format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata: HashMap<String, String> = architecture_metadata(encoder).into_iter().collect();
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| io_err(path, e))
}

/// Reads every tensor of a safetensors file, by name.
///
/// # Errors
///
/// [`ModelError::Io`] when the file cannot be read,
/// [`ModelError::Safetensors`] when it is not a valid safetensors file,
/// [`ModelError::Dtype`] for a tensor neither f32, f64 nor i64.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, NamedTensor>, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => TensorValues::F32(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::F64 => TensorValues::F32(
                data.chunks_exact(8)
                    .map(|b| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        f64::from_le_bytes(a) as f32
                    })
                    .collect(),
            ),
            Dtype::I64 => TensorValues::I64(
                data.chunks_exact(8)
                    .map(|b| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(b);
                        i64::from_le_bytes(a)
                    })
                    .collect(),
            ),
            other => {
                return Err(ModelError::Dtype {
                    path: path.display().to_string(),
                    key: name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        out.insert(
            name.clone(),
            NamedTensor {
                name,
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// Replaces the encoder's weights and BatchNorm statistics by the tensors
/// of a torchvision-keyed state dict; `source` names it in errors (a file
/// path). Keys `fc.*` and `*.num_batches_tracked` are ignored.
///
/// # Errors
///
/// [`ModelError::UnsupportedNorm`] when the encoder's normalisation is not
/// BatchNorm; [`ModelError::MissingTensor`] for a key the encoder needs and
/// the state dict lacks; [`ModelError::ShapeMismatch`] naming the key and
/// both shapes; [`ModelError::UnexpectedTensors`] listing keys that match
/// no layer of the encoder (another architecture); [`ModelError::Dtype`]
/// for integer weights.
pub fn apply_torchvision_state<B: Backend>(
    encoder: ResNet<B>,
    state: &BTreeMap<String, NamedTensor>,
    source: &str,
    device: &B::Device,
) -> Result<ResNet<B>, ModelError> {
    let mut net = encoder;
    let mut used = std::collections::BTreeSet::new();
    let mut take = |key: String, expected: Vec<usize>| -> Result<Vec<f32>, ModelError> {
        let t = state.get(&key).ok_or_else(|| ModelError::MissingTensor {
            path: source.to_string(),
            key: key.clone(),
        })?;
        if t.shape != expected {
            return Err(ModelError::ShapeMismatch {
                path: source.to_string(),
                key,
                file: t.shape.clone(),
                model: expected,
            });
        }
        let TensorValues::F32(values) = &t.values else {
            return Err(ModelError::Dtype {
                path: source.to_string(),
                key,
                dtype: "I64".into(),
            });
        };
        used.insert(key);
        Ok(values.clone())
    };
    walk(&mut net, &mut |prefix, layer| {
        match layer {
            Layer::Conv(conv) => {
                conv.weight = replace(
                    &conv.weight,
                    take(format!("{prefix}.weight"), conv.weight.dims().to_vec())?,
                    device,
                );
                if let Some(bias) = &mut conv.bias {
                    *bias = replace(
                        bias,
                        take(format!("{prefix}.bias"), bias.dims().to_vec())?,
                        device,
                    );
                }
            }
            Layer::Norm(norm) => {
                let bn = batch_norm_of(norm)?;
                let c = bn.gamma.dims().to_vec();
                bn.gamma = replace(
                    &bn.gamma,
                    take(format!("{prefix}.weight"), c.clone())?,
                    device,
                );
                bn.beta = replace(&bn.beta, take(format!("{prefix}.bias"), c.clone())?, device);
                let mean = take(format!("{prefix}.running_mean"), c.clone())?;
                let var = take(format!("{prefix}.running_var"), c)?;
                bn.running_mean = RunningState::new(Tensor::from_floats(mean.as_slice(), device));
                bn.running_var = RunningState::new(Tensor::from_floats(var.as_slice(), device));
            }
        }
        Ok(())
    })?;
    let unexpected: Vec<String> = state
        .keys()
        .filter(|k| {
            !used.contains(*k) && !k.starts_with("fc.") && !k.ends_with(".num_batches_tracked")
        })
        .cloned()
        .collect();
    if !unexpected.is_empty() {
        return Err(ModelError::UnexpectedTensors {
            path: source.to_string(),
            keys: unexpected,
        });
    }
    Ok(net)
}

/// A parameter of the same id and gradient requirement holding `values`
/// (whose count the caller checked against the shape).
fn replace<B: Backend, const D: usize>(
    param: &Param<Tensor<B, D>>,
    values: Vec<f32>,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    let old = param.val();
    let tensor = Tensor::<B, 1>::from_floats(values.as_slice(), device)
        .reshape(old.shape())
        .set_require_grad(old.is_require_grad());
    Param::initialized(param.id, tensor)
}

/// Loads a torchvision-keyed safetensors file (an export of
/// [`save_torchvision`], or torchvision weights saved with
/// `safetensors.torch.save_file(model.state_dict(), path)`) into `encoder`.
///
/// # Errors
///
/// As [`read_safetensors`] and [`apply_torchvision_state`], naming the file.
pub fn load_torchvision<B: Backend>(
    encoder: ResNet<B>,
    path: &Path,
    device: &B::Device,
) -> Result<ResNet<B>, ModelError> {
    let state = read_safetensors(path)?;
    apply_torchvision_state(encoder, &state, &path.display().to_string(), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NormKind;
    use crate::resnet::{ResNetConfig, Stem};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;

    type B = Flex;

    fn shapes(state: &[NamedTensor]) -> Vec<(String, Vec<usize>)> {
        state
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect()
    }

    /// The state dict of `net` with every float tensor replaced by random
    /// values (variances positive), so that a loaded model differs from a
    /// fresh one in every tensor.
    fn randomized(net: &ResNet<B>, seed: u64) -> BTreeMap<String, NamedTensor> {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        torchvision_state_dict(net)
            .expect("batch-norm encoder")
            .into_iter()
            .map(|mut t| {
                if let TensorValues::F32(v) = &mut t.values {
                    let var = t.name.ends_with("running_var");
                    v.iter_mut().for_each(|x| {
                        let r = next();
                        *x = if var { 0.5 + r.abs() } else { r };
                    });
                }
                (t.name.clone(), t)
            })
            .collect()
    }

    #[test]
    fn resnet18_keys_and_shapes_are_torchvisions() {
        let net = ResNetConfig::resnet18().init::<B>(&Default::default());
        let state = shapes(&torchvision_state_dict(&net).expect("exports"));
        // torchvision resnet18: 122 tensors in its state_dict, 2 of them fc
        assert_eq!(state.len(), 120);
        let get = |k: &str| {
            state
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, s)| s.clone())
                .unwrap_or_else(|| panic!("no {k}"))
        };
        assert_eq!(get("conv1.weight"), vec![64, 3, 7, 7]);
        assert_eq!(get("bn1.running_var"), vec![64]);
        assert_eq!(get("bn1.num_batches_tracked"), Vec::<usize>::new());
        assert_eq!(get("layer1.0.conv2.weight"), vec![64, 64, 3, 3]);
        assert_eq!(get("layer2.0.downsample.0.weight"), vec![128, 64, 1, 1]);
        assert_eq!(get("layer2.0.downsample.1.bias"), vec![128]);
        assert_eq!(get("layer4.1.bn2.weight"), vec![512]);
        assert!(
            !state
                .iter()
                .any(|(n, _)| n.starts_with("layer1.0.downsample"))
        );
        let r50 = ResNetConfig::resnet50().init::<B>(&Default::default());
        let state = shapes(&torchvision_state_dict(&r50).expect("exports"));
        // torchvision resnet50: 320 tensors, 2 of them fc
        assert_eq!(state.len(), 318);
        assert!(state.contains(&("layer1.0.downsample.0.weight".into(), vec![256, 64, 1, 1])));
        assert!(state.contains(&("layer4.2.conv3.weight".into(), vec![2048, 512, 1, 1])));
    }

    #[test]
    fn export_then_import_gives_identical_outputs() {
        let device = Default::default();
        let cfg = ResNetConfig::small();
        let trained = cfg.init::<B>(&device);
        let trained =
            apply_torchvision_state(trained.clone(), &randomized(&trained, 7), "random", &device)
                .expect("own layout");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("encoder.safetensors");
        save_torchvision(&trained, &path).expect("saved");
        let loaded = load_torchvision(cfg.init::<B>(&device), &path, &device).expect("loaded");
        let x = Tensor::<B, 4>::random([3, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
        let a: Vec<f32> = trained
            .forward(x.clone())
            .into_data()
            .to_vec()
            .expect("f32");
        let b: Vec<f32> = loaded.forward(x.clone()).into_data().to_vec().expect("f32");
        assert_eq!(a, b);
        // and a fresh encoder is different: the test can fail
        let c: Vec<f32> = cfg
            .init::<B>(&device)
            .forward(x)
            .into_data()
            .to_vec()
            .expect("f32");
        assert_ne!(a, c);
        let meta = architecture_metadata(&loaded);
        assert_eq!(meta["stem"], "small");
        assert_eq!(meta["widths"], "32,64,128");
        assert_eq!(meta["blocks"], "1,1,1");
    }

    #[test]
    fn export_of_a_fresh_encoder_holds_the_weights_it_computes_with() {
        let device = Default::default();
        let cfg = ResNetConfig::small();
        // never run before the export: its parameters are still lazy
        let fresh = cfg.init::<B>(&device);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fresh.safetensors");
        save_torchvision(&fresh, &path).expect("saved");
        let loaded = load_torchvision(cfg.init::<B>(&device), &path, &device).expect("loaded");
        let x = Tensor::<B, 4>::random([2, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
        let a: Vec<f32> = fresh.forward(x.clone()).into_data().to_vec().expect("f32");
        let b: Vec<f32> = loaded.forward(x).into_data().to_vec().expect("f32");
        assert_eq!(a, b);
    }

    #[test]
    fn import_on_autodiff_keeps_parameters_trainable() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let cfg = ResNetConfig::small();
        let net = cfg.init::<A>(&device);
        let state = randomized(&cfg.init::<B>(&device), 3);
        let net = apply_torchvision_state(net, &state, "random", &device).expect("loads");
        assert!(net.conv1.weight.val().is_require_grad());
        let x = Tensor::<A, 4>::random([2, 1, 28, 28], Distribution::Default, &device);
        let grads = net.forward(x).sum().backward();
        assert!(net.conv1.weight.grad(&grads).is_some());
    }

    #[test]
    fn shape_mismatch_names_the_key_and_both_shapes() {
        let device = Default::default();
        let r18 = ResNetConfig::resnet18().init::<B>(&device);
        let state = randomized(&r18, 1);
        let cifar = ResNetConfig::resnet18()
            .with_stem(Stem::Cifar)
            .init::<B>(&device);
        let err = apply_torchvision_state(cifar, &state, "w.safetensors", &device)
            .expect_err("7×7 stem into a 3×3 one");
        let msg = err.to_string();
        assert!(msg.contains("w.safetensors"), "{msg}");
        assert!(msg.contains("conv1.weight"), "{msg}");
        assert!(
            msg.contains("[64, 3, 7, 7]") && msg.contains("[64, 3, 3, 3]"),
            "{msg}"
        );
    }

    #[test]
    fn missing_and_unexpected_keys_are_errors() {
        let device = Default::default();
        let small = ResNetConfig::small().init::<B>(&device);
        let mut state = randomized(&small, 1);
        state.remove("layer2.0.bn1.running_var");
        let err =
            apply_torchvision_state(small.clone(), &state, "f", &device).expect_err("missing");
        assert!(
            err.to_string().contains("layer2.0.bn1.running_var"),
            "{err}"
        );
        // a ResNet-18 state into the small encoder: layer1 shapes differ
        let r18 = ResNetConfig::resnet18()
            .with_stem(Stem::Small)
            .with_in_channels(1);
        let r18 = r18.init::<B>(&device);
        let err = apply_torchvision_state(small.clone(), &randomized(&r18, 2), "f", &device)
            .expect_err("other widths");
        assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err}");
        // extra layers of the same widths are named; fc is ignored
        let mut state = randomized(&small, 1);
        for name in ["layer4.0.conv1.weight", "fc.weight"] {
            state.insert(
                name.into(),
                NamedTensor {
                    name: name.into(),
                    shape: vec![1],
                    values: TensorValues::F32(vec![0.0]),
                },
            );
        }
        let err = apply_torchvision_state(small, &state, "f", &device).expect_err("layer4");
        let msg = err.to_string();
        assert!(
            msg.contains("layer4.0.conv1.weight") && !msg.contains("fc.weight"),
            "{msg}"
        );
    }

    #[test]
    fn non_batch_norm_encoders_are_refused() {
        let device = Default::default();
        let gn = ResNetConfig::small()
            .with_norm(NormKind::GroupWs, 8)
            .init::<B>(&device);
        let err = torchvision_state_dict(&gn).expect_err("group norm");
        assert!(err.to_string().contains("group_ws"), "{err}");
    }
}
