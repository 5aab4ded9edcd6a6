//! xresnet against fastai: parameter counts (spec §1.8), output shapes, initialisation
//! statistics (spec §1.6), state-dict names, and a golden forward/backward computed by fastai
//! 2.8 itself (`fixtures/make_fixtures.py`).

use std::collections::HashMap;

use candle::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use wick_models::{
    Activation, Depth, XResNet, XResNetConfig, count_params, load_weights, save_weights,
    seeded_var_builder, state_dict, summary, xresnet,
};
use wick_testing::{Tol, assert_close};

fn build(config: &XResNetConfig, seed: u64) -> (XResNet, VarMap) {
    let varmap = VarMap::new();
    let model =
        xresnet(config, 0, seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu)).unwrap();
    (model, varmap)
}

/// Parameter counting only needs the shapes: candle's own (unseeded, fast) initialisation.
fn count(config: &XResNetConfig) -> usize {
    let varmap = VarMap::new();
    xresnet(config, 0, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    count_params(&varmap, "")
}

#[test]
fn parameter_counts_equal_fastai_for_every_depth() {
    // Spec §1.8 (sum of numel over fastai's model.parameters()).
    let expected = [
        (Depth::D18, 11_708_744, 11_200_874),
        (Depth::D34, 21_816_904, 21_309_034),
        (Depth::D50, 25_576_264, 23_547_754),
        (Depth::D101, 44_568_392, 42_539_882),
        (Depth::D152, 60_212_040, 58_183_530),
    ];
    for (depth, with_1000, with_10) in expected {
        assert_eq!(count(&XResNetConfig::depth(depth, 1000)), with_1000, "{depth:?} n_out 1000");
        assert_eq!(count(&XResNetConfig::depth(depth, 10)), with_10, "{depth:?} n_out 10");
    }
}

#[test]
fn xresnet50_per_stage_parameters_and_output_shapes() {
    let (model, varmap) = build(&XResNetConfig::depth(Depth::D50, 10), 0);
    // Spec §1.8: stem 28,768 (three ConvLayers); stages 215,808 / 1,219,584 / 7,098,368 /
    // 14,964,736; head 20,490.
    let stem: usize = ["0", "1", "2"].iter().map(|i| count_params(&varmap, i)).sum();
    assert_eq!(stem, 28_768);
    let stages: Vec<usize> =
        ["4", "5", "6", "7"].iter().map(|i| count_params(&varmap, i)).collect();
    assert_eq!(stages, [215_808, 1_219_584, 7_098_368, 14_964_736]);
    assert_eq!(count_params(&varmap, "11"), 20_490);
    // Spec §1.5: 224 -> 112 -> 56 -> 56 -> 28 -> 14 -> 7; 128 -> 64 -> 32 -> 32 -> 16 -> 8 -> 4;
    // 160 -> ... -> 5; odd 161: conv s2 81, pool 41, then 41, 21, 11, 6 (ceil_mode shortcut).
    for (size, sides) in [
        (64, [32, 16, 16, 8, 4, 2]),
        (128, [64, 32, 32, 16, 8, 4]),
        (160, [80, 40, 40, 20, 10, 5]),
        (224, [112, 56, 56, 28, 14, 7]),
        (161, [81, 41, 41, 21, 11, 6]),
    ] {
        let rows = summary(&model, &varmap, size, &Device::Cpu).unwrap();
        let shape_of =
            |index: &str| rows.iter().find(|r| r.index == index).unwrap().output_shape.clone();
        assert_eq!(shape_of("2"), [1, 64, sides[0], sides[0]], "stem at {size}");
        assert_eq!(shape_of("3"), [1, 64, sides[1], sides[1]], "maxpool at {size}");
        for (stage, (channels, side)) in
            [(256, sides[2]), (512, sides[3]), (1024, sides[4]), (2048, sides[5])]
                .into_iter()
                .enumerate()
        {
            assert_eq!(
                shape_of(&(4 + stage).to_string()),
                [1, channels, side, side],
                "stage {} at {size}",
                stage + 1
            );
        }
        assert_eq!(shape_of("11"), [1, 10], "logits at {size}");
    }
}

fn values(varmap: &VarMap, name: &str) -> Vec<f32> {
    varmap.data().lock().unwrap()[name].flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn initialisation_is_fastais_init_cnn() {
    let config = XResNetConfig::depth(Depth::D50, 10);
    let (model, varmap) = build(&config, 3);
    let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    for name in &names {
        let v = values(&varmap, name);
        let shape = varmap.data().lock().unwrap()[name].dims().to_vec();
        if shape.len() == 4 || (shape.len() == 2 && name.ends_with("weight")) {
            // Kaiming normal, fan_in, gain sqrt(2): std = sqrt(2 / fan_in).
            let fan_in: usize = shape[1..].iter().product();
            let expected = (2.0 / fan_in as f64).sqrt();
            let n = v.len() as f64;
            let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
            let std = (v.iter().map(|x| (f64::from(*x) - mean).powi(2)).sum::<f64>() / n).sqrt();
            let tolerance = 4.0 / (2.0 * n).sqrt(); // ~4 standard errors of a sample std
            assert!(
                (std / expected - 1.0).abs() < tolerance.max(0.02),
                "{name}: std {std} vs {expected}"
            );
        } else if name.ends_with("running_var") {
            assert!(v.iter().all(|x| *x == 1.0), "{name}");
        } else if name.ends_with("bias") || name.ends_with("running_mean") {
            assert!(
                v.iter().all(|x| *x == 0.0),
                "{name} must start at 0 (init_cnn zeroes every bias, BN betas included)"
            );
        }
    }
    // BN gammas: 0 exactly for the last BN of every residual branch (convpath.2 in a
    // bottleneck), 1 everywhere else (stem, other convpath layers, shortcut convs).
    let gammas: Vec<&String> =
        names.iter().filter(|n| n.ends_with(".1.weight") && !n.starts_with("11")).collect();
    assert_eq!(gammas.len(), 55, "xresnet50 has 55 BatchNorms");
    for name in gammas {
        let zero = name.contains("convpath.2.1.weight");
        assert!(values(&varmap, name).iter().all(|x| *x == if zero { 0.0 } else { 1.0 }), "{name}");
    }
    assert_eq!(model.batch_norm_names().len(), 55);
    // The head: std sqrt(2/2048) = 0.03125, bias 0.
    assert!(values(&varmap, "11.bias").iter().all(|x| *x == 0.0));
    // Same seed, same weights; another seed, other weights.
    let (_, again) = build(&config, 3);
    let (_, other) = build(&config, 4);
    assert_eq!(
        values(&varmap, "6.3.convpath.1.0.weight"),
        values(&again, "6.3.convpath.1.0.weight")
    );
    assert_ne!(
        values(&varmap, "6.3.convpath.1.0.weight"),
        values(&other, "6.3.convpath.1.0.weight")
    );
}

#[test]
fn state_dict_names_and_shapes_equal_fastais() {
    let text = include_str!("fixtures/state_dict_names.txt");
    for (label, config) in [
        ("xresnet50", XResNetConfig::depth(Depth::D50, 1000)),
        ("xresnet18_sa_mish", sa_mish_config()),
    ] {
        let expected: HashMap<String, String> = text
            .lines()
            .filter_map(|line| line.strip_prefix(&format!("{label} ")))
            .map(|rest| {
                let mut parts = rest.split(' ');
                (parts.next().unwrap().to_string(), parts.next().unwrap().to_string())
            })
            .collect();
        let (model, varmap) = build(&config, 0);
        let ours: HashMap<String, String> = state_dict(&model, &varmap)
            .unwrap()
            .into_iter()
            .map(|(name, tensor)| {
                let dims =
                    tensor.dims().iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
                (name, if dims.is_empty() { "scalar".to_string() } else { dims })
            })
            .collect();
        assert_eq!(ours, expected, "{label}");
    }
}

fn narrow_config() -> XResNetConfig {
    XResNetConfig { widen: 0.125, ..XResNetConfig::depth(Depth::D18, 10) }
}

fn sa_mish_config() -> XResNetConfig {
    XResNetConfig {
        activation: Activation::Mish,
        self_attention: true,
        symmetric_attention: true,
        ..narrow_config()
    }
}

/// A model built over a VarMap pre-filled with fastai's weights (`param.*` in the fixture).
fn from_fixture(config: &XResNetConfig, fixture: &HashMap<String, Tensor>) -> (XResNet, VarMap) {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, tensor) in fixture {
            if let Some(param) = name.strip_prefix("param.")
                && !param.ends_with("num_batches_tracked")
            {
                data.insert(param.to_string(), Var::from_tensor(&tensor.copy().unwrap()).unwrap());
            }
        }
    }
    let before = varmap.data().lock().unwrap().len();
    let model =
        xresnet(config, 0, seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(
        varmap.data().lock().unwrap().len(),
        before,
        "every variable comes from the fixture"
    );
    (model, varmap)
}

/// `max |actual - expected| <= 1e-4 * max |expected|` (relative to the tensor's scale), with
/// 1e-10 of slack for an all-zero reference.
const SCALE_1E4: Tol = Tol { abs: 1e-10, rel: 0.0, of_scale: 1e-4 };

#[test]
fn forward_backward_and_running_stats_match_fastai() {
    // fastai: xresnet18(n_out=10, widen=0.125), torch.manual_seed(0); see make_fixtures.py.
    let fixture =
        candle::safetensors::load("tests/fixtures/xresnet18_w0125.safetensors", &Device::Cpu)
            .unwrap();
    let (model, varmap) = from_fixture(&narrow_config(), &fixture);
    let xs = &fixture["input"];
    assert_close(
        "eval logits",
        model.forward_t(xs, false).unwrap(),
        &fixture["logits_eval"],
        SCALE_1E4,
    );
    let logits = model.forward_t(xs, true).unwrap();
    assert_close("train logits", &logits, &fixture["logits_train"], SCALE_1E4);
    let labels = fixture["labels"].to_dtype(DType::U32).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    assert_close("cross-entropy", loss.reshape(1).unwrap(), &fixture["loss_train"], SCALE_1E4);
    let data = varmap.data().lock().unwrap();
    for (name, expected) in
        fixture.iter().filter_map(|(k, v)| k.strip_prefix("after.").map(|n| (n, v)))
    {
        assert_close(
            &format!("running stat {name} after one train forward"),
            data[name].as_tensor(),
            expected,
            SCALE_1E4,
        );
    }
    let grads = loss.backward().unwrap();
    for (name, expected) in
        fixture.iter().filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n, v)))
    {
        let grad =
            grads.get(data[name].as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_close(&format!("gradient of {name}"), grad, expected, SCALE_1E4);
    }
    assert_eq!(model.num_batches_tracked(), 1);
}

#[test]
fn mish_and_symmetric_self_attention_match_fastai() {
    // fastai: xresnet18(n_out=10, widen=0.125, sa=True, sym=True, act_cls=nn.Mish), γ = 0.3.
    let fixture =
        candle::safetensors::load("tests/fixtures/xresnet18_sa_mish.safetensors", &Device::Cpu)
            .unwrap();
    let (model, _) = from_fixture(&sa_mish_config(), &fixture);
    assert_close(
        "eval logits",
        model.forward_t(&fixture["input"], false).unwrap(),
        &fixture["logits_eval"],
        SCALE_1E4,
    );
}

#[test]
fn save_then_load_gives_identical_outputs() {
    let config = narrow_config();
    let (model, varmap) = build(&config, 11);
    let xs = Tensor::from_vec(
        (0..2 * 3 * 32 * 32).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect::<Vec<_>>(),
        (2, 3, 32, 32),
        &Device::Cpu,
    )
    .unwrap();
    model.forward_t(&xs, true).unwrap(); // moves the running statistics away from 0/1
    let expected = model.forward_t(&xs, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_weights(&model, &varmap, &path).unwrap();
    let (fresh, fresh_map) = build(&config, 12);
    assert_ne!(
        fresh.forward_t(&xs, false).unwrap().to_vec2::<f32>().unwrap(),
        expected.to_vec2::<f32>().unwrap()
    );
    load_weights(&fresh, &fresh_map, &path).unwrap();
    assert_eq!(
        fresh.forward_t(&xs, false).unwrap().to_vec2::<f32>().unwrap(),
        expected.to_vec2::<f32>().unwrap()
    );
    assert_eq!(fresh.num_batches_tracked(), 1);
    // A file for another width is refused naming the file and what differs.
    let (other, other_map) = build(&XResNetConfig::depth(Depth::D18, 10), 0);
    let error = load_weights(&other, &other_map, &path).unwrap_err().to_string();
    assert!(
        error.contains("model.safetensors")
            && error.contains("widen 0.125")
            && error.contains("widen 1"),
        "{error}"
    );
}

/// Rewrites a safetensors file with `edit` applied to its tensors and metadata (as another tool
/// would: the metadata is kept as it was unless `edit` changes it).
fn rewrite(
    path: &std::path::Path,
    edit: impl FnOnce(&mut HashMap<String, Tensor>, &mut HashMap<String, String>),
) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap_or_default();
    let mut tensors = candle::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    edit(&mut tensors, &mut metadata);
    let mut sorted: Vec<(String, Tensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::write(path, safetensors::serialize(sorted, Some(metadata)).unwrap()).unwrap();
}

#[test]
fn weights_carry_their_architecture_and_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (model18, map18) = build(&narrow_config(), 1);
    save_weights(&model18, &map18, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap();
    assert_eq!(metadata["arch"], "xresnet18");
    assert_eq!((metadata["n_out"].as_str(), metadata["widen"].as_str()), ("10", "0.125"));
    assert_eq!(metadata[wick_models::CHECKSUM_KEY].len(), 64);
    // No temporary file is left beside it, and saving again gives the same bytes (the
    // metadata's order does not depend on the process's hash seed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    for _ in 0..3 {
        save_weights(&model18, &map18, &dir.path().join("again.safetensors")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("again.safetensors")).unwrap(), bytes);
    }
    std::fs::remove_file(dir.path().join("again.safetensors")).unwrap();

    // xresnet34's tensor names are a superset of xresnet18's: its file into an xresnet18 is
    // refused by the identity check, naming both architectures...
    let path34 = dir.path().join("model34.safetensors");
    let (model34, map34) =
        build(&XResNetConfig { widen: 0.125, ..XResNetConfig::depth(Depth::D34, 10) }, 1);
    save_weights(&model34, &map34, &path34).unwrap();
    let error = load_weights(&model18, &map18, &path34).unwrap_err().to_string();
    assert!(error.contains("arch xresnet34") && error.contains("arch xresnet18"), "{error}");
    // ... and, without the metadata (a foreign export), by the tensor check, naming the extras.
    rewrite(&path34, |_, metadata| metadata.clear());
    let error = load_weights(&model18, &map18, &path34).unwrap_err();
    match &error {
        wick_models::WeightsError::Tensors { missing, unexpected, .. } => {
            assert!(missing.is_empty(), "{missing:?}");
            assert!(unexpected.iter().any(|name| name.starts_with("4.2.")), "{unexpected:?}");
        }
        other => panic!("expected a tensor mismatch, got {other}"),
    }
    assert!(error.to_string().contains("not in this model"), "{error}");

    // A missing tensor is named.
    let stripped = dir.path().join("stripped.safetensors");
    std::fs::copy(&path, &stripped).unwrap();
    rewrite(&stripped, |tensors, metadata| {
        tensors.remove("11.bias");
        metadata.clear();
    });
    let error = load_weights(&model18, &map18, &stripped).unwrap_err().to_string();
    assert!(error.contains("1 missing (11.bias)"), "{error}");

    // One changed weight (still finite) breaks the checksum; the model is left unchanged.
    let before = map18.data().lock().unwrap()["11.bias"].to_vec1::<f32>().unwrap();
    let flipped = dir.path().join("flipped.safetensors");
    std::fs::copy(&path, &flipped).unwrap();
    rewrite(&flipped, |tensors, _| {
        let bias = tensors["11.bias"].to_vec1::<f32>().unwrap();
        let changed: Vec<f32> = bias.iter().map(|v| v + 0.5).collect();
        tensors.insert("11.bias".into(), Tensor::new(changed, &Device::Cpu).unwrap());
    });
    let error = load_weights(&model18, &map18, &flipped).unwrap_err().to_string();
    assert!(error.contains("checksum mismatch"), "{error}");
    assert_eq!(map18.data().lock().unwrap()["11.bias"].to_vec1::<f32>().unwrap(), before);
}

#[test]
fn non_finite_weights_are_never_saved_nor_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (model, varmap) = build(&narrow_config(), 1);
    save_weights(&model, &varmap, &path).unwrap();
    let saved = std::fs::read(&path).unwrap();

    // Saving a model with one NaN is refused, naming the tensor, and the old file stays.
    let bias = varmap.data().lock().unwrap()["11.bias"].clone();
    let mut values = bias.to_vec1::<f32>().unwrap();
    values[3] = f32::NAN;
    bias.set(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap();
    let error = save_weights(&model, &varmap, &path).unwrap_err().to_string();
    assert!(error.contains("11.bias") && error.contains("1 non-finite values"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), saved);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A file given an infinity is refused when loaded, naming the tensor, whether it kept wick's
    // metadata (and so a checksum that no longer matches) or not.
    for keep_metadata in [false, true] {
        let edited = dir.path().join(format!("edited-{keep_metadata}.safetensors"));
        std::fs::write(&edited, &saved).unwrap();
        rewrite(&edited, |tensors, metadata| {
            let mut weight = tensors["0.1.weight"].to_vec1::<f32>().unwrap();
            weight[0] = f32::INFINITY;
            tensors.insert("0.1.weight".into(), Tensor::new(weight, &Device::Cpu).unwrap());
            if !keep_metadata {
                metadata.clear();
            }
        });
        let (fresh, fresh_map) = build(&narrow_config(), 2);
        let error = load_weights(&fresh, &fresh_map, &edited).unwrap_err().to_string();
        assert!(error.contains("0.1.weight") && error.contains("1 non-finite values"), "{error}");
    }
}

#[test]
fn evaluation_builds_no_autograd_graph() {
    // Eval mode reads every parameter detached, so the logits carry no graph (and activations
    // are freed layer by layer); training mode tracks them for backward.
    let (model, _varmap) = build(&sa_mish_config(), 5);
    let (relu_model, _relu_varmap) = build(&narrow_config(), 5);
    let xs = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    for model in [&model, &relu_model] {
        assert!(
            !model.forward_t(&xs, false).unwrap().track_op(),
            "eval logits must not track a graph"
        );
        assert!(
            model.forward_t(&xs, true).unwrap().track_op(),
            "train logits must track the graph"
        );
    }
}

#[test]
fn the_batch_norm_counter_is_the_model_state() {
    use wick_nn::ModelState;
    let (model, _) = build(&narrow_config(), 11);
    model.set_num_batches_tracked(7);
    let state = model.save_state().unwrap();
    assert_eq!(state.len(), 1);
    assert_eq!(state["num_batches_tracked"].to_scalar::<i64>().unwrap(), 7);
    let (fresh, _) = build(&narrow_config(), 12);
    fresh.load_state(&state).unwrap();
    assert_eq!(fresh.num_batches_tracked(), 7);
    // Missing, unknown or negative: refused by name.
    let refused = |tensors: &std::collections::HashMap<String, Tensor>| {
        fresh.load_state(tensors).unwrap_err().to_string()
    };
    assert!(refused(&Default::default()).contains("num_batches_tracked is missing"));
    let unknown = std::collections::HashMap::from([(
        "dropout_rng".to_string(),
        Tensor::new(1i64, &Device::Cpu).unwrap(),
    )]);
    assert!(refused(&unknown).contains("dropout_rng"));
    let negative = std::collections::HashMap::from([(
        "num_batches_tracked".to_string(),
        Tensor::new(-1i64, &Device::Cpu).unwrap(),
    )]);
    assert!(refused(&negative).contains("num_batches_tracked is -1"));
    assert_eq!(fresh.num_batches_tracked(), 7);
}

#[test]
fn conv_layer_forward_add_relu_gives_the_bits_of_forward_t_then_add_relu() {
    // A residual block's end (ResBlock's path in training and evaluation) against the layer's
    // own forward followed by `add_relu`: two layers drawn from one seed, the output, the
    // gradients of the input, the shortcut and the three variables, and the running
    // statistics after a training step, bit for bit.
    use wick_models::layers::{BnInit, ConvLayerConfig, conv_layer};
    let sine = |dims: &[usize], phase: f32| {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    };
    let config = ConvLayerConfig { kernel: 3, stride: 2, bn_init: BnInit::One, activation: None };
    for train in [true, false] {
        let mut results = Vec::new();
        for fused in [true, false] {
            let varmap = VarMap::new();
            let vb = seeded_var_builder(&varmap, 7, DType::F32, &Device::Cpu);
            let layer = conv_layer(4, 6, config, vb).unwrap();
            assert!(layer.ends_in_batch_norm());
            let xs = Var::from_tensor(&sine(&[2, 4, 7, 7], 0.0)).unwrap();
            let shortcut = Var::from_tensor(&sine(&[2, 6, 4, 4], 1.0)).unwrap();
            let ys = if fused {
                layer.forward_add_relu(xs.as_tensor(), shortcut.as_tensor(), train).unwrap()
            } else {
                let ys = layer.forward_t(xs.as_tensor(), train).unwrap();
                wick_nn::ops::add_relu(&ys, shortcut.as_tensor()).unwrap()
            };
            let bits = |t: &Tensor| -> Vec<u32> {
                let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                values.iter().map(|v| v.to_bits()).collect()
            };
            let mut values = vec![bits(&ys)];
            if train {
                let upstream = sine(ys.dims(), 2.0);
                let grads = (&ys * &upstream).unwrap().sum_all().unwrap().backward().unwrap();
                values.push(bits(grads.get(xs.as_tensor()).unwrap()));
                values.push(bits(grads.get(shortcut.as_tensor()).unwrap()));
                let data = varmap.data().lock().unwrap();
                for name in ["0.weight", "1.weight", "1.bias"] {
                    values.push(bits(grads.get(data[name].as_tensor()).unwrap()));
                }
                for name in ["1.running_mean", "1.running_var"] {
                    values.push(bits(data[name].as_tensor()));
                }
            }
            results.push(values);
        }
        assert_eq!(results[0], results[1], "train: {train}");
        assert!(results[0][0].contains(&0), "some outputs are cut by the ReLU");
    }
}
