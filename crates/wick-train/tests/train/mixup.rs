//! MixUp and CutMix against hand computations and fastai's callbacks.

use candle::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wick_train::loss::Loss;
use wick_train::mixup::{
    CutMixBox, CutMixDraw, MixError, MixUpDraw, cut_mix_images, cutmix_box, cutmix_lambda,
    mix_images, mixed_loss, mixed_loss_per_sample, sample_cutmix, sample_mixup,
};

use crate::common::{EXACT, F32_ROUNDING, fixture, fixture_values, get, scalar, values};
use wick_testing::{Tol, assert_close};

fn u32s(values: &[f64]) -> Vec<u32> {
    values.iter().map(|&v| v as u32).collect()
}

#[test]
fn mixup_by_hand() {
    // Images x = [[1, 2], [3, 4]], permutation [1, 0], λ = [0.75, 0.5]:
    //   x̃0 = 0.75·[1,2] + 0.25·[3,4] = [1.5, 2.5];  x̃1 = 0.5·[3,4] + 0.5·[1,2] = [2, 3].
    // Logits [[0, ln 3], [ln 3, 0]], labels [0, 1]; per-sample CE: sample 0 vs label 0 is ln 4,
    // vs label 1 is ln(4/3); sample 1 vs label 1 is ln 4, vs label 0 is ln(4/3).
    //   ℓ0 = 0.75·ln 4 + 0.25·ln(4/3) = 1.0397208 + 0.0719205 = 1.1116413
    //   ℓ1 = 0.5·ln 4 + 0.5·ln(4/3) = 0.8369882;  mean 0.9743147.
    let draw = MixUpDraw { lambdas: vec![0.75, 0.5], permutation: vec![1, 0] };
    let images = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
    let mixed = mix_images(&images, &draw).unwrap();
    assert_close("images", values(&mixed), [1.5, 2.5, 2.0, 3.0], EXACT);
    let ln3 = 3f32.ln();
    let logits = Tensor::new(&[[0.0f32, ln3], [ln3, 0.0]], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let per_sample = mixed_loss_per_sample(
        &Loss::CrossEntropy,
        &logits,
        &labels,
        &draw.permutation,
        &draw.lambdas,
    )
    .unwrap();
    assert_close("per sample", values(&per_sample), [1.111_641_3, 0.836_988_2], F32_ROUNDING);
    let mean = mixed_loss(&Loss::CrossEntropy, &logits, &labels, &draw.permutation, &draw.lambdas)
        .unwrap();
    assert_close("mean", scalar(&mean), 0.974_314_7, F32_ROUNDING);
}

#[test]
fn mixup_equals_fastai_mixup() {
    // Reference (mixup.safetensors): a fastai `MixUp(0.4)` attached to a Learner with
    // xb = (x,) of shape (6,3,4,5), yb = (labels,); after `before_train()` and `before_batch()`
    // (seed 1234) we read `mix.lam`, the permutation (replayed from the same seed), the mixed
    // `learn.xb[0]`, and `learn.loss_func(logits, labels)` = MixUp's mixed CrossEntropyLossFlat;
    // then `mix.old_lf = LabelSmoothingCrossEntropy(0.1)` and `mix.lf(logits, labels)`.
    let fx = fixture("mixup.safetensors");
    let draw = MixUpDraw {
        lambdas: fixture_values(&fx, "lambda").iter().map(|&v| v as f32).collect(),
        permutation: u32s(&fixture_values(&fx, "permutation")),
    };
    let mixed = mix_images(&get(&fx, "x"), &draw).unwrap();
    assert_close("mixed x", values(&mixed), fixture_values(&fx, "mixed_x"), F32_ROUNDING);
    let logits = get(&fx, "logits");
    let labels = get(&fx, "labels").to_dtype(DType::U32).unwrap();
    let (perm, lambdas) = (&draw.permutation, &draw.lambdas);
    let ce = mixed_loss(&Loss::CrossEntropy, &logits, &labels, perm, lambdas).unwrap();
    assert_close("ce", values(&ce), fixture_values(&fx, "loss.cross_entropy"), F32_ROUNDING);
    let smoothing = Loss::fastai_label_smoothing();
    let ls = mixed_loss(&smoothing, &logits, &labels, perm, lambdas).unwrap();
    assert_close("ls", values(&ls), fixture_values(&fx, "loss.label_smoothing"), F32_ROUNDING);
    let ls_none = mixed_loss_per_sample(&smoothing, &logits, &labels, perm, lambdas).unwrap();
    let expected = fixture_values(&fx, "loss.label_smoothing.none");
    assert_close("ls none", values(&ls_none), &expected, F32_ROUNDING);
}

#[test]
fn mixup_draws_are_seeded_folded_and_permutations() {
    let draw = sample_mixup(64, 0.4, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    let again = sample_mixup(64, 0.4, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    assert_eq!(draw, again, "same seed, same draw");
    assert!(draw.lambdas.iter().all(|&l| (0.5..=1.0).contains(&l)));
    let mut sorted = draw.permutation.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..64).collect::<Vec<u32>>());
    // Spec §7.1: folded Beta(0.4, 0.4) has mean ≈ 0.84 (numpy, 1e7 draws: 0.8398).
    let many = sample_mixup(20_000, 0.4, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
    let mean = many.lambdas.iter().map(|&l| f64::from(l)).sum::<f64>() / 20_000.0;
    assert_close("folded beta mean", mean, 0.84, Tol { abs: 0.01, rel: 0.0, of_scale: 0.0 });
    assert!(matches!(
        sample_mixup(4, 0.0, &mut ChaCha8Rng::seed_from_u64(0)),
        Err(MixError::InvalidAlpha { .. })
    ));
}

#[test]
fn cutmix_boxes_equal_fastai_rand_bbox() {
    // Reference (cutmix.safetensors, "boxes.*"): `CutMix(1.).rand_bbox(W=10, H=8, lam)` for 24
    // seeded draws (the centre replayed from the same RNG state) and 5 forced edge cases
    // (λ 0 and 1, centres at the borders), box = (x1, y1, x2, y2).
    let fx = fixture("cutmix.safetensors");
    let size = u32s(&fixture_values(&fx, "boxes.size"));
    let (height, width) = (size[0] as usize, size[1] as usize);
    let lambdas = fixture_values(&fx, "boxes.lambda");
    let centres = u32s(&fixture_values(&fx, "boxes.centre"));
    let boxes = u32s(&fixture_values(&fx, "boxes.box"));
    for (i, &lambda) in lambdas.iter().enumerate() {
        let (cx, cy) = (centres[2 * i] as usize, centres[2 * i + 1] as usize);
        let b = cutmix_box(height, width, lambda as f32, cx, cy);
        let expected = &boxes[4 * i..4 * i + 4];
        let actual = [b.x1 as u32, b.y1 as u32, b.x2 as u32, b.y2 as u32];
        assert_eq!(actual, expected, "box {i}: λ {lambda}, centre ({cx}, {cy})");
    }
}

#[test]
fn cutmix_batch_equals_fastai_cutmix() {
    // Reference (cutmix.safetensors, "batch.*"): `CutMix(1.)` on xb = (x,) of shape
    // (4,3,8,10) after `before_train()`/`before_batch()` with seed 99: the box rand_bbox
    // returned, the permutation, `cm.lam` after pasting, the mixed `learn.xb[0]`, and
    // `learn.loss_func(logits, labels)` (mixed CrossEntropyLossFlat).
    let fx = fixture("cutmix.safetensors");
    let b = u32s(&fixture_values(&fx, "batch.box"));
    let cut_box =
        CutMixBox { x1: b[0] as usize, y1: b[1] as usize, x2: b[2] as usize, y2: b[3] as usize };
    let lambda = cutmix_lambda(8, 10, &cut_box);
    assert_close("lambda", f64::from(lambda), fixture_values(&fx, "batch.lambda")[0], EXACT);
    let draw = CutMixDraw {
        lambda_drawn: fixture_values(&fx, "batch.lambda_drawn")[0] as f32,
        permutation: u32s(&fixture_values(&fx, "batch.permutation")),
        cut_box,
        lambda,
    };
    let mixed = cut_mix_images(&get(&fx, "x"), &draw).unwrap();
    assert_close("mixed x", values(&mixed), fixture_values(&fx, "batch.mixed_x"), EXACT);
    let labels = get(&fx, "labels").to_dtype(DType::U32).unwrap();
    let loss = mixed_loss(
        &Loss::CrossEntropy,
        &get(&fx, "logits"),
        &labels,
        &draw.permutation,
        &draw.lambdas(),
    )
    .unwrap();
    let expected = fixture_values(&fx, "batch.loss.cross_entropy");
    assert_close("loss", values(&loss), &expected, F32_ROUNDING);
}

#[test]
fn cutmix_draws_are_consistent() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let images = Tensor::arange(0f32, 2.0 * 3.0 * 6.0 * 7.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 6, 7))
        .unwrap();
    for _ in 0..20 {
        let draw = sample_cutmix(2, 6, 7, 1.0, &mut rng).unwrap();
        let b = draw.cut_box;
        assert!(b.x1 <= b.x2 && b.x2 <= 7 && b.y1 <= b.y2 && b.y2 <= 6, "{b:?}");
        let expected_lambda = 1.0 - b.area() as f32 / 42.0;
        assert_close("lambda", f64::from(draw.lambda), f64::from(expected_lambda), EXACT);
        let mixed = cut_mix_images(&images, &draw).unwrap();
        // Pixels changed only inside the box (the two images differ everywhere).
        let changed =
            values(&mixed.ne(&images).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap())[0];
        let swapped = draw.permutation != [0, 1];
        let expected_changed = if swapped { 2 * 3 * b.area() } else { 0 };
        assert_eq!(changed as usize, expected_changed, "{draw:?}");
    }
    // λ = 1 gives an empty box: the batch is unchanged and λ stays 1.
    let empty = cutmix_box(6, 7, 1.0, 3, 3);
    assert_eq!(empty.area(), 0);
    let draw =
        CutMixDraw { lambda_drawn: 1.0, permutation: vec![1, 0], cut_box: empty, lambda: 1.0 };
    assert_close(
        "unchanged",
        values(&cut_mix_images(&images, &draw).unwrap()),
        values(&images),
        EXACT,
    );
}
