//! The ONNX graph of an xresnet in eval mode (opset 17), written with tract-onnx's protobuf
//! messages, and a tract runner to check it.
//!
//! Graph, for input `image (N, S, S, 3) uint8` (RGB):
//! `Cast(float) → Transpose(0,3,1,2) → Div 255` (fastai's `IntToFloatTensor`) `→ Sub mean →
//! Div std` (fastai's `Normalize`, when the recipe used it), then the network as
//! [`wick_models::XResNetConfig::plan`] lays it out: each `ConvLayer` is
//! `Conv (no bias) → BatchNormalization (ε 1e-5, running statistics) → Relu`, each block
//! `Add(convpath, idpath) → Relu` with ResNet-D's `AveragePool(ceil_mode=1,
//! count_include_pad=0)` on strided shortcuts (PyTorch's `AvgPool2d(2, ceil_mode=True)`
//! divides edge windows by their in-bounds size), then `GlobalAveragePool → Flatten → Gemm`
//! (`logits`) and `Softmax` (`probabilities`). Dropout is the identity in eval mode.
//! Initializers keep PyTorch's state-dict names (`4.0.convpath.0.0.weight`, ...).

use std::collections::HashMap;

use candle::{DType, Tensor};
use prost::Message;
use tract_onnx::pb::{
    self, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_shape_proto, type_proto,
};
use wick_models::{Activation, ConvLayerPlan, XResNetConfig};

/// The ONNX operator set the graph uses.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 (ONNX 1.10+), the first that carries opset 17 models.
const IR_VERSION: i64 = 8;
/// `TensorProto.DataType` values.
const FLOAT: i32 = pb::tensor_proto::DataType::Float as i32;
const UINT8: i32 = pb::tensor_proto::DataType::Uint8 as i32;

/// An export failure, naming the tensor, layer or setting involved.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The architecture has a part the exporter does not write.
    #[error("export: {0} cannot be exported to ONNX (only ReLU xresnets without self-attention)")]
    Unsupported(String),
    /// The state dict lacks a tensor the architecture needs.
    #[error("export: tensor {name} is missing from the model's weights")]
    MissingTensor {
        /// Its PyTorch name.
        name: String,
    },
    /// A tensor's shape differs from the architecture's.
    #[error("export: tensor {name} has shape {actual:?}, the architecture expects {expected:?}")]
    Shape {
        /// Its PyTorch name.
        name: String,
        /// Its shape in the weights.
        actual: Vec<usize>,
        /// The shape the plan gives.
        expected: Vec<usize>,
    },
    /// A tensor holds NaN or an infinity: a diverged model is never exported.
    #[error("export: tensor {name} holds a non-finite value")]
    NonFinite {
        /// Its PyTorch name.
        name: String,
    },
    /// The export settings contradict the model.
    #[error("export: {0}")]
    Config(String),
    /// Reading a tensor failed.
    #[error("export: reading tensor {name}: {source}")]
    Tensor {
        /// Its PyTorch name.
        name: String,
        /// The underlying candle error.
        #[source]
        source: candle::Error,
    },
    /// The ONNX runtime refused or failed to run the model.
    #[error("ONNX runtime (tract): {0}")]
    Runtime(String),
}

/// What the graph does to an image before the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// S: the input's height and width in pixels (the training size).
    pub size: usize,
    /// `Normalize`'s per-channel (mean, std) of `[0, 1]` pixel values (R, G, B), or `None`
    /// when the model was trained on unnormalised `[0, 1]` inputs.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// Everything an ONNX export needs besides the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxExportConfig {
    /// The input size and normalisation the graph applies before the network.
    pub preprocessing: Preprocessing,
    /// Class names in logit order (K of them).
    pub class_names: Vec<String>,
    /// The architecture's name (e.g. `xresnet50`), stored as metadata `arch`.
    pub arch: String,
    /// Further `(key, value)` metadata (e.g. the recipe's name).
    pub metadata: Vec<(String, String)>,
}

/// The ONNX model (serialised `ModelProto` bytes) of the xresnet `config` with the weights
/// `tensors` (PyTorch state-dict names, as [`wick_models::state_dict`] gives them).
///
/// # Errors
/// [`ExportError::Unsupported`] for Mish or self-attention; a missing, mis-shaped or
/// non-finite tensor; class names that do not match `config.n_out`; a zero size.
pub fn xresnet_to_onnx(
    config: &XResNetConfig,
    tensors: &HashMap<String, Tensor>,
    export: &OnnxExportConfig,
) -> Result<Vec<u8>, ExportError> {
    if export.class_names.len() != config.n_out {
        return Err(ExportError::Config(format!(
            "{} class names for a model with {} outputs",
            export.class_names.len(),
            config.n_out
        )));
    }
    let size = export.preprocessing.size;
    if size == 0 || config.c_in != 3 {
        return Err(ExportError::Config(format!(
            "the input must be an RGB image of a positive size, got size {size} and {} channels",
            config.c_in
        )));
    }
    let mut graph = Graph { tensors, nodes: Vec::new(), initializers: Vec::new() };
    let mut x = graph.preprocess("image", &export.preprocessing);
    let plan = config.plan();
    for layer in &plan.stem {
        x = graph.conv_layer(&x, layer)?;
    }
    x = graph.node(
        "MaxPool",
        &[&x],
        "3.maxpool",
        vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
    );
    for block in plan.stages.iter().flatten() {
        if block.attention.is_some() {
            return Err(ExportError::Unsupported(format!(
                "self-attention in block {}",
                block.name
            )));
        }
        let mut branch = x.clone();
        for layer in &block.convpath {
            branch = graph.conv_layer(&branch, layer)?;
        }
        let mut shortcut = x.clone();
        if let Some(stride) = block.shortcut_pool {
            let s = stride as i64;
            shortcut = graph.node(
                "AveragePool",
                &[&shortcut],
                &format!("{}.idpath.pool", block.name),
                vec![
                    ints("kernel_shape", &[s, s]),
                    ints("strides", &[s, s]),
                    ints("pads", &[0, 0, 0, 0]),
                    int("ceil_mode", 1),
                    int("count_include_pad", 0),
                ],
            );
        }
        if let Some(layer) = &block.shortcut_conv {
            shortcut = graph.conv_layer(&shortcut, layer)?;
        }
        let sum = graph.node("Add", &[&branch, &shortcut], &format!("{}.add", block.name), vec![]);
        x = graph.activation(&sum, Some(block.activation), &block.name)?;
    }
    let pooled = graph.node("GlobalAveragePool", &[&x], "pool", vec![]);
    let flat = graph.node("Flatten", &[&pooled], "flatten", vec![int("axis", 1)]);
    let weight =
        graph.weight(&format!("{}.weight", plan.head), &[config.n_out, plan.head_in_features])?;
    let bias = graph.weight(&format!("{}.bias", plan.head), &[config.n_out])?;
    let logits = graph.node("Gemm", &[&flat, &weight, &bias], "logits", vec![int("transB", 1)]);
    let probabilities = graph.node("Softmax", &[&logits], "probabilities", vec![int("axis", 1)]);

    let k = config.n_out as i64;
    let batch = || tensor_shape_proto::Dimension {
        denotation: String::new(),
        value: Some(tensor_shape_proto::dimension::Value::DimParam("N".to_string())),
    };
    let fixed = |n: i64| tensor_shape_proto::Dimension {
        denotation: String::new(),
        value: Some(tensor_shape_proto::dimension::Value::DimValue(n)),
    };
    let s = size as i64;
    let input = value_info("image", UINT8, vec![batch(), fixed(s), fixed(s), fixed(3)]);
    let outputs = vec![
        value_info(&logits, FLOAT, vec![batch(), fixed(k)]),
        value_info(&probabilities, FLOAT, vec![batch(), fixed(k)]),
    ];
    let metadata = metadata(config, export)?;
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "wick".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        doc_string: format!(
            "{} trained with wick: uint8 RGB images (N, {size}, {size}, 3) in, logits and \
             probabilities (N, {k}) out.",
            export.arch
        ),
        graph: Some(GraphProto {
            node: graph.nodes,
            name: export.arch.clone(),
            initializer: graph.initializers,
            input: vec![input],
            output: outputs,
            ..Default::default()
        }),
        metadata_props: metadata,
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// The `metadata_props` a consumer needs to feed the model and read its answer.
fn metadata(
    config: &XResNetConfig,
    export: &OnnxExportConfig,
) -> Result<Vec<StringStringEntryProto>, ExportError> {
    let p = &export.preprocessing;
    let json = |value: serde_json::Value| value.to_string();
    let mut entries = vec![
        ("arch".to_string(), export.arch.clone()),
        ("n_out".to_string(), config.n_out.to_string()),
        ("classes".to_string(), json(serde_json::json!(export.class_names))),
        ("input_size".to_string(), p.size.to_string()),
        (
            "input".to_string(),
            format!(
                "image: uint8 RGB, layout NHWC (N, {s}, {s}, 3); resize the shorter side to {s} \
                 and centre-crop to {s}x{s} (fastai's validation transform); the graph divides \
                 by 255{}",
                if p.normalize.is_some() { " and normalizes" } else { "" },
                s = p.size
            ),
        ),
        (
            "normalize".to_string(),
            match p.normalize {
                Some((mean, std)) => json(serde_json::json!({ "mean": mean, "std": std })),
                None => "none".to_string(),
            },
        ),
    ];
    for (key, value) in &export.metadata {
        if entries.iter().any(|(k, _)| k == key) {
            return Err(ExportError::Config(format!("metadata key {key} is set by the exporter")));
        }
        entries.push((key.clone(), value.clone()));
    }
    Ok(entries.into_iter().map(|(key, value)| StringStringEntryProto { key, value }).collect())
}

/// The graph under construction: nodes in topological order and the initializers.
struct Graph<'a> {
    tensors: &'a HashMap<String, Tensor>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph<'_> {
    /// Adds a node with one output named `output` and returns that name.
    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: output.to_string(),
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        output.to_string()
    }

    /// A float32 constant initializer.
    fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.initializers.push(float_tensor(name, dims, values));
        name.to_string()
    }

    /// The weight `name` as an initializer, checked for shape and finiteness.
    fn weight(&mut self, name: &str, expected: &[usize]) -> Result<String, ExportError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| ExportError::MissingTensor { name: name.to_string() })?;
        if tensor.dims() != expected {
            return Err(ExportError::Shape {
                name: name.to_string(),
                actual: tensor.dims().to_vec(),
                expected: expected.to_vec(),
            });
        }
        let values: Vec<f32> = tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(|source| ExportError::Tensor { name: name.to_string(), source })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ExportError::NonFinite { name: name.to_string() });
        }
        Ok(self.constant(name, expected, &values))
    }

    /// `uint8 (N, S, S, 3)` → `float (N, 3, S, S)` in `[0, 1]`, then `Normalize`.
    fn preprocess(&mut self, input: &str, p: &Preprocessing) -> String {
        let float = self.node("Cast", &[input], "image.float", vec![int("to", FLOAT as i64)]);
        let nchw =
            self.node("Transpose", &[&float], "image.nchw", vec![ints("perm", &[0, 3, 1, 2])]);
        let scale = self.constant("image.255", &[], &[255.0]);
        let unit = self.node("Div", &[&nchw, &scale], "image.unit", vec![]);
        match p.normalize {
            Some((mean, std)) => {
                let mean = self.constant("normalize.mean", &[1, 3, 1, 1], &mean);
                let std = self.constant("normalize.std", &[1, 3, 1, 1], &std);
                let centred = self.node("Sub", &[&unit, &mean], "image.centred", vec![]);
                self.node("Div", &[&centred, &std], "image.normalized", vec![])
            }
            None => unit,
        }
    }

    /// fastai's `ConvLayer`: conv (no bias, padding k/2) → BatchNorm → activation.
    fn conv_layer(&mut self, input: &str, layer: &ConvLayerPlan) -> Result<String, ExportError> {
        let (k, s) = (layer.config.kernel, layer.config.stride);
        let name = &layer.name;
        let weight = self
            .weight(&format!("{name}.0.weight"), &[layer.out_channels, layer.in_channels, k, k])?;
        let (k, s, p) = (k as i64, s as i64, (k / 2) as i64);
        let conv = self.node(
            "Conv",
            &[input, &weight],
            &format!("{name}.conv"),
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &[p, p, p, p]),
                ints("dilations", &[1, 1]),
                int("group", 1),
            ],
        );
        let c = [layer.out_channels];
        let bn_inputs = [
            self.weight(&format!("{name}.1.weight"), &c)?,
            self.weight(&format!("{name}.1.bias"), &c)?,
            self.weight(&format!("{name}.1.running_mean"), &c)?,
            self.weight(&format!("{name}.1.running_var"), &c)?,
        ];
        let mut inputs = vec![conv.as_str()];
        inputs.extend(bn_inputs.iter().map(String::as_str));
        let bn = self.node(
            "BatchNormalization",
            &inputs,
            &format!("{name}.bn"),
            vec![float("epsilon", wick_models::layers::BN_EPS as f32)],
        );
        self.activation(&bn, layer.config.activation, name)
    }

    fn activation(
        &mut self,
        input: &str,
        activation: Option<Activation>,
        name: &str,
    ) -> Result<String, ExportError> {
        match activation {
            None => Ok(input.to_string()),
            Some(Activation::Relu) => {
                Ok(self.node("Relu", &[input], &format!("{name}.relu"), vec![]))
            }
            Some(other) => Err(ExportError::Unsupported(format!("activation {other:?} in {name}"))),
        }
    }
}

fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        name: name.to_string(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn value_info(
    name: &str,
    elem_type: i32,
    dim: Vec<tensor_shape_proto::Dimension>,
) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

/// Runs the ONNX model `bytes` with tract on `images`, `n` RGB images of `size`x`size` in
/// NHWC `uint8` order, and returns its logits, `n` rows of K.
///
/// # Errors
/// [`ExportError::Runtime`] when tract cannot load or run the model, or `images` has the
/// wrong length.
pub fn run_onnx(
    bytes: &[u8],
    images: &[u8],
    n: usize,
    size: usize,
) -> Result<Vec<Vec<f32>>, ExportError> {
    use tract_onnx::prelude::*;
    let runtime = |error: TractError| ExportError::Runtime(format!("{error:#}"));
    if images.len() != n * size * size * 3 {
        return Err(ExportError::Runtime(format!(
            "{} bytes of images for {n} RGB images of {size}x{size}",
            images.len()
        )));
    }
    let model = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(runtime)?
        .with_input_fact(0, InferenceFact::dt_shape(u8::datum_type(), tvec!(n, size, size, 3)))
        .map_err(runtime)?
        .into_optimized()
        .map_err(runtime)?
        .into_runnable()
        .map_err(runtime)?;
    let input = tract_ndarray::Array4::from_shape_vec((n, size, size, 3), images.to_vec())
        .map_err(|error| ExportError::Runtime(error.to_string()))?;
    let outputs = model.run(tvec!(Tensor::from(input).into_tvalue())).map_err(runtime)?;
    let logits = outputs[0].to_plain_array_view::<f32>().map_err(runtime)?;
    let k = logits.shape().get(1).copied().unwrap_or(0);
    let flat: Vec<f32> = logits.iter().copied().collect();
    Ok(flat.chunks(k.max(1)).map(<[f32]>::to_vec).collect())
}
