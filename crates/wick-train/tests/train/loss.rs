//! Losses against hand computations and fastai / torch values.

use candle::{DType, Device, Tensor, Var};
use wick_train::loss::{
    Loss, Reduction, cross_entropy, cross_entropy_per_sample, label_smoothing_cross_entropy,
    soft_target_cross_entropy, soft_target_cross_entropy_per_sample,
};

use crate::common::{F32_ROUNDING, fixture, get, scalar, values};
use wick_testing::assert_close;

#[test]
fn losses_by_hand() {
    // logits [0, ln 3] → p = [1/4, 3/4]; label 0.
    // CE = −ln(1/4) = ln 4 = 1.3862944.
    // Label smoothing eps 0.1, K 2: 0.1/2·(ln 4 + ln(4/3)) + 0.9·ln 4
    //   = 0.05·(1.3862944 + 0.2876821) + 1.2476649 = 1.3313637.
    // Soft targets [0.5, 0.5]: 0.5·ln 4 + 0.5·ln(4/3) = 0.8369882.
    let logits = Tensor::new(&[[0.0f32, 3f32.ln()]], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32], &Device::Cpu).unwrap();
    let soft = Tensor::new(&[[0.5f32, 0.5]], &Device::Cpu).unwrap();
    assert_close(
        "ce",
        scalar(&cross_entropy(&logits, &labels).unwrap()),
        1.386_294_4,
        F32_ROUNDING,
    );
    let smoothed = label_smoothing_cross_entropy(&logits, &labels, 0.1, Reduction::Mean).unwrap();
    assert_close("ls", scalar(&smoothed), 1.331_363_7, F32_ROUNDING);
    let soft_ce = soft_target_cross_entropy(&logits, &soft).unwrap();
    assert_close("soft", scalar(&soft_ce), 0.836_988_2, F32_ROUNDING);
}

#[test]
fn losses_equal_fastai() {
    // Reference (loss.safetensors): logits (6,10) = 2·randn, labels [3,0,9,3,7,1],
    // `CrossEntropyLossFlat()(logits, labels)` and with reduction='none';
    // `LabelSmoothingCrossEntropy(eps=0.1, reduction=r)(logits, labels)` for r in mean/sum/none;
    // soft targets: torch `F.cross_entropy(logits, probs)` (mean and 'none').
    let fx = fixture("loss.safetensors");
    let logits = get(&fx, "logits");
    let labels = get(&fx, "labels").to_dtype(DType::U32).unwrap();
    let soft = get(&fx, "soft_targets");
    let check = |what: &str, actual: Tensor, key: &str| {
        assert_close(what, values(&actual), values(&get(&fx, key)), F32_ROUNDING);
    };
    check("ce mean", cross_entropy(&logits, &labels).unwrap(), "cross_entropy.mean");
    check("ce none", cross_entropy_per_sample(&logits, &labels).unwrap(), "cross_entropy.none");
    for (reduction, key) in [
        (Reduction::Mean, "label_smoothing.mean"),
        (Reduction::Sum, "label_smoothing.sum"),
        (Reduction::Unreduced, "label_smoothing.none"),
    ] {
        let actual = label_smoothing_cross_entropy(&logits, &labels, 0.1, reduction).unwrap();
        check(key, actual, key);
    }
    check("soft mean", soft_target_cross_entropy(&logits, &soft).unwrap(), "soft_target.mean");
    check(
        "soft none",
        soft_target_cross_entropy_per_sample(&logits, &soft).unwrap(),
        "soft_target.none",
    );

    let smoothing = Loss::fastai_label_smoothing();
    check("Loss forward", smoothing.forward(&logits, &labels).unwrap(), "label_smoothing.mean");
    check(
        "Loss per_sample",
        smoothing.per_sample(&logits, &labels).unwrap(),
        "label_smoothing.none",
    );
    check("Loss ce", Loss::CrossEntropy.forward(&logits, &labels).unwrap(), "cross_entropy.mean");
    // i64 labels are accepted too.
    let labels_i64 = get(&fx, "labels");
    check("ce i64", cross_entropy(&logits, &labels_i64).unwrap(), "cross_entropy.mean");
}

#[test]
fn label_smoothing_gradient_equals_torch_autograd() {
    // Reference: `LabelSmoothingCrossEntropy(eps=0.1)(x, labels).backward(); x.grad`
    // (loss.safetensors, "label_smoothing.mean.grad").
    let fx = fixture("loss.safetensors");
    let logits = Var::from_tensor(&get(&fx, "logits")).unwrap();
    let labels = get(&fx, "labels").to_dtype(DType::U32).unwrap();
    let loss = Loss::fastai_label_smoothing().forward(&logits, &labels).unwrap();
    let grads = loss.backward().unwrap();
    let grad = grads.get(logits.as_tensor()).unwrap();
    let expected = values(&get(&fx, "label_smoothing.mean.grad"));
    assert_close("grad", values(grad), &expected, F32_ROUNDING);
}

#[test]
fn shape_errors_name_the_shapes() {
    let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let labels = Tensor::zeros(3, DType::U32, &Device::Cpu).unwrap();
    let err = cross_entropy(&logits, &labels).unwrap_err().to_string();
    assert!(err.contains("labels must be (B,) with B = 2"), "{err}");
    let float_labels = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    assert!(cross_entropy(&logits, &float_labels).is_err());
}
