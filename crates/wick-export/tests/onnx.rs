//! The ONNX export against wick itself: tract (a pure-Rust ONNX runtime) runs the exported
//! graph on uint8 images and must reproduce wick's eval-mode logits of the same images
//! (`byte / 255`, then `Normalize`, then the network) within 1e-4; the metadata carries the
//! class names and input size; what cannot be exported is refused with its name.

use std::collections::HashMap;

use candle::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick_data::{IMAGENET_MEAN, IMAGENET_STD, Normalize};
use wick_export::{ExportError, OnnxExportConfig, Preprocessing, run_onnx, xresnet_to_onnx};
use wick_models::{Activation, Depth, XResNet, XResNetConfig, seeded_var_builder, xresnet};
use wick_testing::{Tol, assert_close};

/// xresnet18 at widen 0.125 with 3 outputs, whose BatchNorm parameters and running statistics
/// are drawn away from their initial 1/0 (so that every BatchNorm term of the graph matters,
/// including the residual branches' zero-initialised γ).
fn model(config: &XResNetConfig) -> (XResNet, VarMap) {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 7, DType::F32, &Device::Cpu);
    let model = xresnet(config, 0, vb).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        if var.rank() != 1 || name.ends_with(".bias") && !name.contains(".1.") {
            continue;
        }
        let range = if name.ends_with("running_var") || name.ends_with(".1.weight") {
            0.5f32..1.5
        } else {
            -0.2f32..0.2
        };
        let values: Vec<f32> =
            (0..var.elem_count()).map(|_| rng.random_range(range.clone())).collect();
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    drop(data);
    (model, varmap)
}

fn images(n: usize, size: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    (0..n * size * size * 3).map(|_| rng.random::<u8>()).collect()
}

fn export_config(n_out: usize, size: usize) -> OnnxExportConfig {
    OnnxExportConfig {
        preprocessing: Preprocessing { size, normalize: Some((IMAGENET_MEAN, IMAGENET_STD)) },
        class_names: ["tench", "English springer", "cassette player ♪"][..n_out]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        arch: "xresnet18".to_string(),
        metadata: vec![("recipe".to_string(), "test".to_string())],
    }
}

fn tensors(model: &XResNet, varmap: &VarMap) -> HashMap<String, Tensor> {
    wick_models::state_dict(model, varmap).unwrap()
}

#[test]
fn tract_reproduces_wicks_logits_from_uint8_images() {
    // 40 px: the late stages see 5x5 → 3x3 → 2x2, so ResNet-D's AvgPool2d(2, ceil_mode=True)
    // meets odd sizes and partial windows (PyTorch divides those by their in-bounds count).
    let (n, size) = (3, 40);
    let config = XResNetConfig { widen: 0.125, ..XResNetConfig::depth(Depth::D18, 3) };
    let (model, varmap) = model(&config);
    let pixels = images(n, size);
    let xs = Tensor::from_vec(pixels.clone(), (n, size, size, 3), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap();
    let xs = (xs / 255.0).unwrap();
    let xs = Normalize::imagenet(&Device::Cpu).unwrap().forward(&xs).unwrap();
    let expected: Vec<Vec<f32>> = model.forward_t(&xs, false).unwrap().to_vec2().unwrap();

    let bytes =
        xresnet_to_onnx(&config, &tensors(&model, &varmap), &export_config(3, size)).unwrap();
    let actual = run_onnx(&bytes, &pixels, n, size).unwrap();
    assert_eq!(actual.len(), n);
    let scale = expected.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.1, "the logits should not be trivially small: {expected:?}");
    for (row, (a, e)) in actual.iter().zip(&expected).enumerate() {
        assert_eq!(a.len(), 3);
        assert_close(
            &format!("image {row}: tract vs wick"),
            a.as_slice(),
            e.as_slice(),
            Tol::abs(1e-4),
        );
    }

    // The metadata a consumer reads: opset, class names (UTF-8 kept), input size.
    let proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(proto.opset_import[0].version, 17);
    let meta: HashMap<String, String> =
        proto.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
    let classes: Vec<String> = serde_json::from_str(&meta["classes"]).unwrap();
    assert_eq!(classes, ["tench", "English springer", "cassette player ♪"]);
    assert_eq!(meta["input_size"], "40");
    assert_eq!(meta["arch"], "xresnet18");
    assert_eq!(meta["recipe"], "test");
}

#[test]
fn what_cannot_be_exported_is_refused_by_name() {
    let size = 32;
    let mish = XResNetConfig {
        widen: 0.125,
        activation: Activation::Mish,
        ..XResNetConfig::depth(Depth::D18, 2)
    };
    let (model, varmap) = self::model(&mish);
    let error =
        xresnet_to_onnx(&mish, &tensors(&model, &varmap), &export_config(2, size)).unwrap_err();
    assert!(matches!(error, ExportError::Unsupported(_)), "{error}");
    assert!(error.to_string().contains("Mish"), "{error}");

    let config = XResNetConfig { widen: 0.125, ..XResNetConfig::depth(Depth::D18, 2) };
    let (model, varmap) = self::model(&config);
    let mut weights = tensors(&model, &varmap);
    // Class names that do not match the head.
    let error = xresnet_to_onnx(&config, &weights, &export_config(3, size)).unwrap_err();
    assert_eq!(error.to_string(), "export: 3 class names for a model with 2 outputs");
    // A NaN in one BatchNorm statistic: a diverged model is never exported.
    let name = "5.0.convpath.1.1.running_var";
    let original = weights[name].clone();
    let mut values: Vec<f32> = original.to_vec1().unwrap();
    values[0] = f32::NAN;
    weights.insert(name.to_string(), Tensor::new(values, &Device::Cpu).unwrap());
    let error = xresnet_to_onnx(&config, &weights, &export_config(2, size)).unwrap_err();
    assert_eq!(error.to_string(), format!("export: tensor {name} holds a non-finite value"));
    // A missing tensor.
    weights.insert(name.to_string(), original);
    weights.remove("11.bias");
    let error = xresnet_to_onnx(&config, &weights, &export_config(2, size)).unwrap_err();
    assert_eq!(error.to_string(), "export: tensor 11.bias is missing from the model's weights");
}
