//! Optimizers against hand computations and fastai's own `Adam` / `SGD`.

use std::collections::HashMap;

use candle::backprop::GradStore;
use candle::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick_train::optim::{
    Adam, AdamConfig, OptimError, Optimizer, Sgd, SgdConfig, StepKernel, optim_params,
    trainable_params,
};

use crate::common::{EXACT, F32_ROUNDING, fixture, fixture_values, get, values};
use wick_testing::{Tol, assert_close};

const KERNELS: [StepKernel; 2] = [StepKernel::FusedCpu, StepKernel::TensorOps];

fn var(data: &[f32], shape: &[usize]) -> Var {
    Var::from_slice(data, shape, &Device::Cpu).unwrap()
}

fn grads(pairs: &[(&Var, &Tensor)]) -> GradStore {
    let mut store = GradStore::default();
    for (var, grad) in pairs {
        store.insert(var.as_tensor(), (*grad).clone());
    }
    store
}

#[test]
fn adam_first_step_by_hand() {
    // lr 0.1, mom 0.9, sqr_mom 0.99, eps 1e-5, wd 0.01, one step (t = 1).
    // Weight w (rank 2, decayed) = [[1, −2]], g = [[0.5, 0.1]]:
    //   decay: w·(1 − 0.1·0.01) = [0.999, −1.998]
    //   m = 0.1·g = [0.05, 0.01];  v = 0.01·g² = [0.0025, 0.0001]
    //   m̂ = m/(1 − 0.9) = [0.5, 0.1];  v̂ = v/(1 − 0.99) = [0.25, 0.01];  √v̂ = [0.5, 0.1]
    //   w = [0.999 − 0.1·0.5/(0.5 + 1e-5), −1.998 − 0.1·0.1/(0.1 + 1e-5)]
    //     = [0.999 − 0.0999980000, −1.998 − 0.0999900010] = [0.8990020000, −2.0979900010]
    // Bias b (rank 1, not decayed) = [0.5], g = [−1]:
    //   m̂ = −1, √v̂ = 1, b = 0.5 + 0.1/(1 + 1e-5) = 0.5999990000
    for kernel in KERNELS {
        let w = var(&[1.0, -2.0], &[1, 2]);
        let b = var(&[0.5], &[1]);
        let params = optim_params(vec![("w".into(), w.clone()), ("b".into(), b.clone())]);
        let config = AdamConfig { kernel, ..AdamConfig::fastai_defaults(0.1) };
        let mut adam = Adam::new(params, config).unwrap();
        let g_w = Tensor::new(&[[0.5f32, 0.1]], &Device::Cpu).unwrap();
        let g_b = Tensor::new(&[-1.0f32], &Device::Cpu).unwrap();
        adam.step(&grads(&[(&w, &g_w), (&b, &g_b)])).unwrap();
        let what = format!("{kernel:?}");
        assert_close(&what, values(&w), [0.899_002_000_0, -2.097_990_001_0], F32_ROUNDING);
        assert_close(&what, values(&b), [0.599_999_000_0], F32_ROUNDING);
        assert_eq!(adam.step_count("w"), 1);
    }
}

/// Replays make_fixtures.py's `run_optimizer`: params `weight` (3,4) and `bias` (4,), the bias
/// without weight decay, six steps with the recorded lr/mom, no bias gradient at step 3.
fn replay_fastai_run(
    name: &str,
    make: impl Fn(Vec<wick_train::OptimParam>) -> Box<dyn Optimizer>,
) -> (Box<dyn Optimizer>, HashMap<String, Tensor>) {
    let fx = fixture(name);
    let weight = Var::from_tensor(&get(&fx, "weight.initial").copy().unwrap()).unwrap();
    let bias = Var::from_tensor(&get(&fx, "bias.initial").copy().unwrap()).unwrap();
    // The rank rule gives the bias do_wd = false, as fastai's `opt.state[bias]['do_wd'] = False`.
    let params =
        optim_params(vec![("weight".into(), weight.clone()), ("bias".into(), bias.clone())]);
    assert!(params.iter().all(|p| p.do_wd == (p.name == "weight")));
    let mut opt = make(params);
    let lrs = fixture_values(&fx, "lr");
    let moms = fixture_values(&fx, "mom");
    for step in 0..lrs.len() {
        let weight_grad = get(&fx, &format!("weight.grad.{step}"));
        let bias_grad = fx.get(&format!("bias.grad.{step}"));
        let mut store = grads(&[(&weight, &weight_grad)]);
        if let Some(bias_grad) = bias_grad {
            store.insert(bias.as_tensor(), bias_grad.clone());
        }
        opt.set_lr(lrs[step]);
        opt.set_mom(moms[step]);
        opt.step(&store).unwrap();
        let what = format!("{name} step {step}");
        let expected_weight = fixture_values(&fx, &format!("weight.after.{step}"));
        let expected_bias = fixture_values(&fx, &format!("bias.after.{step}"));
        assert_close(&format!("{what} weight"), values(&weight), &expected_weight, F32_ROUNDING);
        assert_close(&format!("{what} bias"), values(&bias), &expected_bias, F32_ROUNDING);
    }
    (opt, fx)
}

#[test]
fn adam_equals_fastai_adam() {
    // Reference: fastai `Adam([weight, bias], lr=1e-2, wd=0.1)` (mom 0.9, sqr_mom 0.99, eps
    // 1e-5 by default), `opt.state[bias]['do_wd'] = False`, then per step
    // `opt.set_hyper('lr', …); opt.set_hyper('mom', …); opt.step()` with lr
    // [1e-2, 2e-2, 5e-3, 3e-2, 1e-2, 2e-2] and mom [0.95, 0.9, 0.85, 0.88, 0.93, 0.95]
    // (adam.safetensors). The bias has no gradient at step 3, so it takes 5 steps.
    for kernel in KERNELS {
        let (opt, fx) = replay_fastai_run("adam.safetensors", |params| {
            let config = AdamConfig { wd: 0.1, kernel, ..AdamConfig::fastai_defaults(1e-2) };
            Box::new(Adam::new(params, config).unwrap())
        });
        let state = opt.state_dict().unwrap();
        for param in ["weight", "bias"] {
            for buffer in ["grad_avg", "sqr_avg", "step"] {
                let actual = values(&state[&format!("state.{param}.{buffer}")]);
                let expected = fixture_values(&fx, &format!("{param}.state.{buffer}"));
                assert_close(
                    &format!("{kernel:?} {param}.{buffer}"),
                    &actual,
                    &expected,
                    F32_ROUNDING,
                );
            }
        }
        assert_close("bias steps", values(&state["state.bias.step"]), [5.0], EXACT);
    }
}

#[test]
fn sgd_equals_fastai_sgd() {
    // Reference: fastai `SGD([weight, bias], lr=1e-2, mom=0.9, wd=0.1)` with the same lr/mom
    // sequence, bias without decay and without a gradient at step 3 (sgd.safetensors).
    for kernel in KERNELS {
        let (opt, fx) = replay_fastai_run("sgd.safetensors", |params| {
            let config = SgdConfig { lr: 1e-2, mom: 0.9, wd: 0.1, kernel };
            Box::new(Sgd::new(params, config).unwrap())
        });
        let state = opt.state_dict().unwrap();
        for param in ["weight", "bias"] {
            let actual = values(&state[&format!("state.{param}.grad_avg")]);
            let expected = fixture_values(&fx, &format!("{param}.state.grad_avg"));
            assert_close(&format!("{kernel:?} {param}.grad_avg"), &actual, &expected, F32_ROUNDING);
        }
    }
}

#[test]
fn plain_sgd_ignores_momentum_set_later() {
    // fastai SGD built with mom=0 has no average_grad callback: p ← p − lr·g whatever mom is set.
    // p = [1, 2], g = [0.5, −1], lr 0.1 → [0.95, 2.1].
    for kernel in KERNELS {
        let p = var(&[1.0, 2.0], &[2, 1]);
        let params = optim_params(vec![("p".into(), p.clone())]);
        let mut sgd =
            Sgd::new(params, SgdConfig { kernel, ..SgdConfig::fastai_defaults(0.1) }).unwrap();
        sgd.set_mom(0.9);
        let g = Tensor::new(&[[0.5f32], [-1.0]], &Device::Cpu).unwrap();
        sgd.step(&grads(&[(&p, &g)])).unwrap();
        assert_close("plain sgd", values(&p), [0.95, 2.1], F32_ROUNDING);
        assert!(!sgd.state_dict().unwrap().keys().any(|k| k.starts_with("state.")));
    }
}

/// Parameters with random values from a seeded RNG: a rank-2 weight and a rank-1 bias.
fn random_params(rng: &mut ChaCha8Rng) -> Vec<(String, Var)> {
    let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>();
    vec![
        ("layer.weight".into(), var(&draw(12), &[3, 4])),
        ("layer.bias".into(), var(&draw(3), &[3])),
    ]
}

fn random_grads(params: &[(String, Var)], rng: &mut ChaCha8Rng) -> Vec<Tensor> {
    params
        .iter()
        .map(|(_, v)| {
            let data: Vec<f32> =
                (0..v.elem_count()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            Tensor::from_vec(data, v.shape(), &Device::Cpu).unwrap()
        })
        .collect()
}

fn clone_params(params: &[(String, Var)]) -> Vec<(String, Var)> {
    params
        .iter()
        .map(|(n, v)| (n.clone(), Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap()))
        .collect()
}

fn step_with(
    opt: &mut dyn Optimizer,
    params: &[(String, Var)],
    grads_: &[Tensor],
    lr: f64,
    mom: f64,
) {
    let pairs: Vec<(&Var, &Tensor)> = params.iter().map(|(_, v)| v).zip(grads_).collect();
    opt.set_lr(lr);
    opt.set_mom(mom);
    opt.step(&grads(&pairs)).unwrap();
}

fn make_optimizer(kind: &str, kernel: StepKernel, params: &[(String, Var)]) -> Box<dyn Optimizer> {
    let params = optim_params(params.to_vec());
    match kind {
        "adam" => Box::new(
            Adam::new(params, AdamConfig { kernel, ..AdamConfig::fastai_defaults(1e-2) }).unwrap(),
        ),
        _ => {
            Box::new(Sgd::new(params, SgdConfig { lr: 1e-2, mom: 0.9, wd: 0.01, kernel }).unwrap())
        }
    }
}

#[test]
fn state_dict_save_load_continues_like_an_uninterrupted_run() {
    // Three steps, checkpoint through a safetensors file, two more steps: the restored run must
    // equal the uninterrupted one bit for bit (same kernel), and to float32 rounding when the
    // checkpoint is loaded into the other kernel.
    let schedule = [(1e-2, 0.95), (2e-2, 0.9), (3e-2, 0.85), (2e-2, 0.9), (1e-2, 0.95)];
    for kind in ["adam", "sgd"] {
        for (save_kernel, load_kernel) in [
            (StepKernel::FusedCpu, StepKernel::FusedCpu),
            (StepKernel::TensorOps, StepKernel::TensorOps),
            (StepKernel::FusedCpu, StepKernel::TensorOps),
        ] {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let params = random_params(&mut rng);
            let all_grads: Vec<Vec<Tensor>> =
                (0..5).map(|_| random_grads(&params, &mut rng)).collect();
            let mut uninterrupted = make_optimizer(kind, save_kernel, &params);
            for (step, &(lr, mom)) in schedule.iter().enumerate().take(3) {
                step_with(uninterrupted.as_mut(), &params, &all_grads[step], lr, mom);
            }
            let path = std::env::temp_dir().join(format!(
                "wick-train-{kind}-{save_kernel:?}-{load_kernel:?}-{}.safetensors",
                std::process::id()
            ));
            candle::safetensors::save(&uninterrupted.state_dict().unwrap(), &path).unwrap();
            let saved = candle::safetensors::load(&path, &Device::Cpu).unwrap();
            std::fs::remove_file(&path).unwrap();

            let restored_params = clone_params(&params);
            let mut restored = make_optimizer(kind, load_kernel, &restored_params);
            restored.load_state_dict(&saved).unwrap();
            assert_eq!(restored.lr(), 3e-2, "hypers are restored");
            for (step, &(lr, mom)) in schedule.iter().enumerate().skip(3) {
                step_with(uninterrupted.as_mut(), &params, &all_grads[step], lr, mom);
                step_with(restored.as_mut(), &restored_params, &all_grads[step], lr, mom);
            }
            let tol = if save_kernel == load_kernel { EXACT } else { F32_ROUNDING };
            for ((name, a), (_, b)) in params.iter().zip(&restored_params) {
                let what = format!("{kind} {save_kernel:?}→{load_kernel:?} {name}");
                assert_close(&what, values(b), values(a), tol);
            }
        }
    }
}

#[test]
fn reset_state_restarts_like_a_fresh_optimizer() {
    // After reset_state the next step is a first step (m = v = 0, t = 1): it equals what a new
    // Adam does from the same parameter values.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let params = random_params(&mut rng);
    let first = random_grads(&params, &mut rng);
    let second = random_grads(&params, &mut rng);
    let mut adam = make_optimizer("adam", StepKernel::FusedCpu, &params);
    step_with(adam.as_mut(), &params, &first, 1e-2, 0.9);
    adam.reset_state();
    assert!(!adam.state_dict().unwrap().keys().any(|k| k.starts_with("state.")));
    let fresh_params = clone_params(&params);
    let mut fresh = make_optimizer("adam", StepKernel::FusedCpu, &fresh_params);
    step_with(adam.as_mut(), &params, &second, 1e-2, 0.9);
    step_with(fresh.as_mut(), &fresh_params, &second, 1e-2, 0.9);
    for ((name, a), (_, b)) in params.iter().zip(&fresh_params) {
        assert_close(name, values(a), values(b), EXACT);
    }
}

#[test]
fn trainable_params_skip_batchnorm_buffers_and_sort_by_name() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let _conv = candle_nn::conv2d_no_bias(3, 4, 3, Default::default(), vb.pp("0.0")).unwrap();
    let _bn = candle_nn::batch_norm(4, 1e-5, vb.pp("0.1")).unwrap();
    let _head = candle_nn::linear(4, 2, vb.pp("11")).unwrap();
    let named = trainable_params(&varmap, wick_models::is_buffer);
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["0.0.weight", "0.1.bias", "0.1.weight", "11.bias", "11.weight"]);
    let decayed: Vec<String> =
        optim_params(named).into_iter().filter(|p| p.do_wd).map(|p| p.name).collect();
    // fastai wd_bn_bias=False: only the conv and linear weights decay.
    assert_eq!(decayed, ["0.0.weight", "11.weight"]);
}

#[test]
fn self_attention_vectors_are_buffers_and_get_no_optimizer_state() {
    // PyTorch's spectral_norm registers weight_u and weight_v with register_buffer: they are not
    // in parameters(), so fastai's optimizer never holds them (nor weight-decays them, nor
    // all-reduces their zero gradients). One buffer rule (wick_models::is_buffer) serves the
    // optimizer and the parameter count.
    use candle::ModuleT;
    use wick_models::{Depth, XResNetConfig, count_params, seeded_var_builder, xresnet};
    let varmap = VarMap::new();
    // fastai puts the attention in the last block of the fourth stage from the end.
    let config = XResNetConfig {
        layers: vec![1, 1, 1, 1],
        widen: 0.25,
        self_attention: true,
        ..XResNetConfig::depth(Depth::D18, 2)
    };
    let model =
        xresnet(&config, 3, seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu)).unwrap();
    let all: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    let attention: Vec<&String> = all.iter().filter(|n| n.contains("weight_u")).collect();
    assert!(!attention.is_empty(), "the model has self-attention: {all:?}");
    let params = trainable_params(&varmap, wick_models::is_buffer);
    let is_vector = |name: &str| name.ends_with("weight_u") || name.ends_with("weight_v");
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert!(!names.iter().any(|n| is_vector(n)), "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("weight_orig"))
            && names.iter().any(|n| n.ends_with("gamma"))
    );
    let counted: usize = params.iter().map(|(_, var)| var.elem_count()).sum();
    assert_eq!(counted, count_params(&varmap, ""));

    let mut adam = Adam::new(optim_params(params), AdamConfig::fastai_defaults(1e-3)).unwrap();
    let xs = Tensor::ones((2, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let loss = model.forward_t(&xs, true).unwrap().sqr().unwrap().mean_all().unwrap();
    adam.step(&loss.backward().unwrap()).unwrap();
    assert!(adam.params().iter().all(|p| !is_vector(&p.name)));
    let state = adam.state_dict().unwrap();
    assert!(state.keys().any(|k| k.ends_with("weight_orig.grad_avg")), "the step ran");
    assert!(!state.keys().any(|k| k.contains("weight_u") || k.contains("weight_v")), "{state:?}");
}

#[test]
fn load_state_dict_names_missing_and_unexpected_keys() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let params = random_params(&mut rng);
    let grads_ = random_grads(&params, &mut rng);
    let mut adam = make_optimizer("adam", StepKernel::FusedCpu, &params);
    step_with(adam.as_mut(), &params, &grads_, 1e-2, 0.9);
    let full = adam.state_dict().unwrap();

    let mut missing = full.clone();
    missing.remove("state.layer.weight.sqr_avg");
    match adam.load_state_dict(&missing) {
        Err(OptimError::MissingKey { key }) => assert_eq!(key, "state.layer.weight.sqr_avg"),
        other => panic!("expected MissingKey, got {other:?}"),
    }
    let mut extra = full.clone();
    extra.insert("state.other.step".into(), Tensor::new(1i64, &Device::Cpu).unwrap());
    match adam.load_state_dict(&extra) {
        Err(OptimError::UnexpectedKey { key }) => assert_eq!(key, "state.other.step"),
        other => panic!("expected UnexpectedKey, got {other:?}"),
    }
    let mut reshaped = full;
    reshaped.insert(
        "state.layer.bias.grad_avg".into(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(matches!(adam.load_state_dict(&reshaped), Err(OptimError::StateShape { .. })));
}

#[test]
fn duplicate_parameter_names_are_rejected() {
    let p = var(&[1.0], &[1]);
    let params = optim_params(vec![("p".into(), p.clone()), ("p".into(), p)]);
    match Adam::new(params, AdamConfig::fastai_defaults(1e-3)) {
        Err(OptimError::DuplicateName { name }) => assert_eq!(name, "p"),
        other => panic!("expected DuplicateName, got {other:?}"),
    }
}

#[test]
fn one_variable_under_two_names_is_rejected() {
    // It would be stepped twice a step, and in parallel in no fixed order.
    let p = var(&[1.0], &[1]);
    let params = optim_params(vec![("a".into(), p.clone()), ("b".into(), p)]);
    match Adam::new(params, AdamConfig::fastai_defaults(1e-3)) {
        Err(OptimError::DuplicateVariable { first, second }) => {
            assert_eq!((first.as_str(), second.as_str()), ("a", "b"));
        }
        other => panic!("expected DuplicateVariable, got {other:?}"),
    }
}

#[test]
fn fused_and_tensor_op_kernels_agree_on_a_large_parameter() {
    // 100k elements over a few Adam steps: the two code paths stay within float32 rounding.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let data: Vec<f32> = (0..100_000).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let params_a = vec![("w".to_string(), var(&data, &[100, 1000]))];
    let params_b = clone_params(&params_a);
    let mut fused = make_optimizer("adam", StepKernel::FusedCpu, &params_a);
    let mut ops = make_optimizer("adam", StepKernel::TensorOps, &params_b);
    for step in 0..3 {
        let g = random_grads(&params_a, &mut rng);
        step_with(fused.as_mut(), &params_a, &g, 1e-2 * (step + 1) as f64, 0.9);
        step_with(ops.as_mut(), &params_b, &g, 1e-2 * (step + 1) as f64, 0.9);
    }
    assert_close(
        "kernels",
        values(&params_a[0].1),
        values(&params_b[0].1),
        Tol { abs: 2e-6, rel: 2e-6, of_scale: 0.0 },
    );
}

/// Two parameters added together receive the very same gradient tensor from candle's `Add`
/// backward (the vendored `GradStore::accumulate` stores first gradients without copying them,
/// decision 0004): stepping one must not change the gradient the other then reads.
/// y = Σ(w + b) with w = [1, −2], b = [0.5, 0.5]: both gradients are [1, 1]; after one SGD
/// step of lr 0.1 (no momentum, no decay) w = [0.9, −2.1] and b = [0.4, 0.4].
#[test]
fn parameters_sharing_one_gradient_tensor_step_independently() {
    for kernel in KERNELS {
        let w = var(&[1.0, -2.0], &[2]);
        let b = var(&[0.5, 0.5], &[2]);
        let grads = (w.as_tensor() + b.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let (g_w, g_b) = (grads.get(w.as_tensor()).unwrap(), grads.get(b.as_tensor()).unwrap());
        assert_eq!((values(g_w), values(g_b)), (vec![1.0, 1.0], vec![1.0, 1.0]));
        let params = optim_params(vec![("w".into(), w.clone()), ("b".into(), b.clone())]);
        let config = SgdConfig { kernel, mom: 0.0, wd: 0.0, ..SgdConfig::fastai_defaults(0.1) };
        let mut sgd = Sgd::new(params, config).unwrap();
        sgd.step(&grads).unwrap();
        let what = format!("{kernel:?}");
        assert_close(&what, values(&w), [0.9, -2.1], F32_ROUNDING);
        assert_close(&what, values(&b), [0.4, 0.4], F32_ROUNDING);
        assert_eq!(values(grads.get(b.as_tensor()).unwrap()), vec![1.0, 1.0], "{what}");
    }
}
