//! Optimizers with fastai's exact update rules (`fastai/optimizer.py`, spec §2.2): [`Adam`]
//! (decoupled weight decay, β2 0.99, eps 1e-5, bias correction with the current β1) and [`Sgd`]
//! (undampened momentum, decoupled weight decay), behind one [`Optimizer`] trait a Learner drives.
//!
//! What this file owns: the parameter list an optimizer updates (sorted by name, trainable
//! parameters only, each flagged for weight decay or not), the per-parameter state (moving
//! averages and step counts), the update arithmetic, and the state's save/load as named tensors.
//! It does not own schedules (`schedule.rs` computes lr/mom; the Learner calls [`Optimizer::set_lr`]
//! and [`Optimizer::set_mom`] before each batch) nor the backward pass (it consumes a `GradStore`).
//!
//! Which parameters skip weight decay: fastai's `wd_bn_bias=False` excludes every parameter of a
//! normalisation layer and every `bias`. For the networks wick trains (xresnet and friends) those
//! are exactly the parameters of rank ≤ 1 (BN γ/β, biases), while conv and linear weights have rank
//! ≥ 2, so [`optim_params`] uses the rank rule. [`optim_params_with_rule`] takes any predicate for
//! networks where that is not true (for example a learnable scalar gain of shape `(1,)`, which fastai
//! would decay but the rank rule exempts).
//!
//! Two update paths compute the same arithmetic (see [`StepKernel`]): wick-nn's fused in-place
//! loop over each parameter's storage (`wick_nn::ops::adam_step`/`sgd_step`: one pass, no
//! temporaries, the path that matters for ~25M parameters per batch; CPU `f32` today), and a
//! device-generic path made of candle tensor ops used for every other device or dtype. Both follow torch's float32 operation order; neither is bit-identical to
//! torch's vectorised kernels (which use fused multiply-adds), so agreement is to float32 rounding.

use std::collections::HashMap;

use candle::backprop::GradStore;
use candle::{DType, Device, Shape, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;

/// An optimizer failure; each variant names the parameter or state key involved.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A tensor operation failed while updating or (de)serialising `param`.
    #[error("optimizer: parameter {param}: {source}")]
    Tensor {
        /// The parameter being processed.
        param: String,
        /// The underlying candle error.
        #[source]
        source: candle::Error,
    },
    /// Two parameters were given the same name.
    #[error("optimizer: duplicate parameter name {name}")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// One variable was given twice, under two names (it would be stepped twice).
    #[error("optimizer: parameters {first} and {second} are the same variable")]
    DuplicateVariable {
        /// The first name, in name order.
        first: String,
        /// The second name.
        second: String,
    },
    /// A gradient's shape differs from its parameter's.
    #[error("optimizer: gradient of {param} has shape {grad:?}, parameter has {expected:?}")]
    GradShape {
        /// The parameter.
        param: String,
        /// The parameter's shape.
        expected: Shape,
        /// The gradient's shape.
        grad: Shape,
    },
    /// A state dict lacks a key this optimizer needs.
    #[error("optimizer state: missing key {key}")]
    MissingKey {
        /// The missing key.
        key: String,
    },
    /// A state dict has a key that belongs to no parameter of this optimizer.
    #[error("optimizer state: unexpected key {key}")]
    UnexpectedKey {
        /// The unknown key.
        key: String,
    },
    /// A state tensor's shape differs from its parameter's.
    #[error("optimizer state: {key} has shape {actual:?}, expected {expected:?}")]
    StateShape {
        /// The state key.
        key: String,
        /// The shape the parameter needs.
        expected: Shape,
        /// The shape found.
        actual: Shape,
    },
    /// A state tensor could not be read (wrong rank for a scalar, unsupported dtype, …).
    #[error("optimizer state: {key}: {source}")]
    StateValue {
        /// The state key.
        key: String,
        /// The underlying candle error.
        #[source]
        source: candle::Error,
    },
}

/// One parameter an optimizer updates.
#[derive(Debug, Clone)]
pub struct OptimParam {
    /// Its name in the VarMap (for example `4.0.convpath.0.1.weight`); also its state-dict prefix.
    pub name: String,
    /// The variable, updated in place.
    pub var: Var,
    /// Whether weight decay applies (fastai's per-parameter `do_wd`).
    pub do_wd: bool,
}

/// The trainable parameters of `varmap`, sorted by name: every variable whose name `is_buffer`
/// rejects (PyTorch's `parameters()`). Which variables are buffers is the model's to say (for
/// wick-models' networks, `wick_models::is_buffer`), as fastai's `splitter` is the caller's.
///
/// `VarMap` iterates in random order; sorting makes optimizer state and checkpoints deterministic.
pub fn trainable_params(varmap: &VarMap, is_buffer: impl Fn(&str) -> bool) -> Vec<(String, Var)> {
    // A poisoned lock only means another thread panicked while holding it; the map is still valid.
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut params: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// fastai's no-decay rule for standard networks: norm-layer parameters and biases, i.e. rank ≤ 1.
pub fn is_norm_or_bias(_name: &str, var: &Var) -> bool {
    var.rank() <= 1
}

/// Flags each parameter for weight decay with [`is_norm_or_bias`] (fastai `wd_bn_bias=False`).
pub fn optim_params(named: Vec<(String, Var)>) -> Vec<OptimParam> {
    optim_params_with_rule(named, is_norm_or_bias)
}

/// Flags each parameter for weight decay: `skip_decay(name, var)` true means no decay.
pub fn optim_params_with_rule(
    named: Vec<(String, Var)>,
    skip_decay: impl Fn(&str, &Var) -> bool,
) -> Vec<OptimParam> {
    named
        .into_iter()
        .map(|(name, var)| {
            let do_wd = !skip_decay(&name, &var);
            OptimParam { name, var, do_wd }
        })
        .collect()
}

/// Which code computes an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKernel {
    /// A fused in-place loop for parameters stored as contiguous `f32` on the CPU; tensor ops for
    /// every other parameter. The default.
    FusedCpu,
    /// candle tensor ops for every parameter (what runs on CUDA); selectable to test it on CPU.
    TensorOps,
}

/// What a Learner needs from an optimizer. Hyper-parameters are shared by all parameters (wick
/// trains a single parameter group, as fastai does without a splitter).
pub trait Optimizer {
    /// Updates every parameter that has a gradient in `grads`; parameters without one are skipped
    /// and their step counts do not advance (as in fastai and PyTorch).
    fn step(&mut self, grads: &GradStore) -> Result<(), OptimError>;
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate for the next steps.
    fn set_lr(&mut self, lr: f64);
    /// The current momentum (Adam β1, SGD momentum).
    fn mom(&self) -> f64;
    /// Sets the momentum for the next steps.
    fn set_mom(&mut self, mom: f64);
    /// The current weight decay.
    fn wd(&self) -> f64;
    /// Sets the weight decay for the next steps (fastai `fit(wd=…)`).
    fn set_wd(&mut self, wd: f64);
    /// Discards the moving averages and step counts, keeping hyper-parameters and decay flags
    /// (fastai `Optimizer.clear_state`, what `freeze`/`unfreeze` call).
    fn reset_state(&mut self);
    /// The state as named tensors (safetensors-compatible): `hypers.<name>` f64 scalars, and for
    /// each parameter that has state `state.<param>.<buffer>` (same shape and device as the
    /// parameter) plus `state.<param>.step` (an i64 scalar) where the optimizer counts steps.
    fn state_dict(&self) -> Result<HashMap<String, Tensor>, OptimError>;
    /// Restores a [`Optimizer::state_dict`]; parameters without keys get no state. Every key must
    /// belong to this optimizer.
    fn load_state_dict(&mut self, state: &HashMap<String, Tensor>) -> Result<(), OptimError>;
    /// The parameters, sorted by name.
    fn params(&self) -> &[OptimParam];
}

/// The [`Optimizer`] methods that read and set the hyper-parameters every optimizer here has
/// (`self.config.lr`, `.mom`, `.wd`) and that manage its `self.param_states`.
macro_rules! shared_optimizer_methods {
    () => {
        fn lr(&self) -> f64 {
            self.config.lr
        }

        fn set_lr(&mut self, lr: f64) {
            self.config.lr = lr;
        }

        fn mom(&self) -> f64 {
            self.config.mom
        }

        fn set_mom(&mut self, mom: f64) {
            self.config.mom = mom;
        }

        fn wd(&self) -> f64 {
            self.config.wd
        }

        fn set_wd(&mut self, wd: f64) {
            self.config.wd = wd;
        }

        fn reset_state(&mut self) {
            self.param_states.clear();
        }

        fn params(&self) -> &[OptimParam] {
            &self.param_states.params
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Adam
// ---------------------------------------------------------------------------------------------

/// Hyper-parameters of fastai's `Adam` (with `decouple_wd=True`, the only mode wick has).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// β1, the gradient moving-average coefficient (scheduled by one-cycle).
    pub mom: f64,
    /// β2, the squared-gradient moving-average coefficient.
    pub sqr_mom: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay: `p ← p·(1 − lr·wd)` for parameters with `do_wd`.
    pub wd: f64,
    /// Which code computes the update.
    pub kernel: StepKernel,
}

impl AdamConfig {
    /// fastai `Adam(params, lr)`: mom 0.9, sqr_mom 0.99, eps 1e-5, wd 0.01.
    pub fn fastai_defaults(lr: f64) -> Self {
        Self { lr, mom: 0.9, sqr_mom: 0.99, eps: 1e-5, wd: 0.01, kernel: StepKernel::FusedCpu }
    }
}

/// fastai's `Adam`: for each parameter p with gradient g, with the current lr and mom, and its own
/// step count t (starting at 1):
///
/// 1. `p ← p·(1 − lr·wd)` if `do_wd`
/// 2. `m ← mom·m + (1 − mom)·g`
/// 3. `v ← sqr_mom·v + (1 − sqr_mom)·g²`
/// 4. `p ← p − lr/(1 − momᵗ) · m / (√(v/(1 − sqr_momᵗ)) + eps)`
///
/// The bias correction uses the *current* mom, which one-cycle changes every batch.
#[derive(Debug)]
pub struct Adam {
    param_states: ParamStates<AdamState>,
    config: AdamConfig,
}

#[derive(Debug)]
struct AdamState {
    step: u64,
    grad_avg: Buffer,
    sqr_avg: Buffer,
}

impl Adam {
    /// An Adam over `params` (sorted by name here), with no state yet.
    pub fn new(params: Vec<OptimParam>, config: AdamConfig) -> Result<Self, OptimError> {
        Ok(Self { param_states: ParamStates::new(params)?, config })
    }

    /// The current hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The step count of parameter `name` (0 if it has no state or does not exist).
    pub fn step_count(&self, name: &str) -> u64 {
        self.param_states.state(name).map_or(0, |state| state.step)
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> Result<(), OptimError> {
        let config = self.config;
        self.param_states.update_each(grads, config.kernel, |param, grad, path, slot| {
            let state = slot.get_or_insert_with(|| AdamState {
                step: 0,
                grad_avg: Buffer::Empty,
                sqr_avg: Buffer::Empty,
            });
            state.step += 1;
            let scalars = adam_scalars(&config, param.do_wd, state.step);
            match path {
                UpdatePath::Fused => {
                    let grad_avg = state.grad_avg.host_mut(&param.var)?;
                    let sqr_avg = state.sqr_avg.host_mut(&param.var)?;
                    fused_adam(&param.var, grad, grad_avg, sqr_avg, scalars)
                }
                UpdatePath::TensorOps => tensor_ops_adam(&param.var, grad, state, scalars),
            }
        })
    }

    shared_optimizer_methods!();

    fn state_dict(&self) -> Result<HashMap<String, Tensor>, OptimError> {
        let c = &self.config;
        let hypers =
            [("lr", c.lr), ("mom", c.mom), ("sqr_mom", c.sqr_mom), ("eps", c.eps), ("wd", c.wd)];
        self.param_states.state_dict(&hypers, |var, state| {
            Ok(vec![
                ("grad_avg", state.grad_avg.to_tensor(var)?),
                ("sqr_avg", state.sqr_avg.to_tensor(var)?),
                ("step", step_tensor(state.step)?),
            ])
        })
    }

    fn load_state_dict(&mut self, state: &HashMap<String, Tensor>) -> Result<(), OptimError> {
        let kernel = self.config.kernel;
        let read_config = |reader: &mut StateReader<'_>| {
            Ok(AdamConfig {
                lr: reader.hyper("lr")?,
                mom: reader.hyper("mom")?,
                sqr_mom: reader.hyper("sqr_mom")?,
                eps: reader.hyper("eps")?,
                wd: reader.hyper("wd")?,
                kernel,
            })
        };
        let read_state = |reader: &mut StateReader<'_>, prefix: &str, var: &Var, path| {
            Ok(AdamState {
                step: reader.step(&format!("{prefix}.step"))?,
                grad_avg: reader.buffer(&format!("{prefix}.grad_avg"), var, path)?,
                sqr_avg: reader.buffer(&format!("{prefix}.sqr_avg"), var, path)?,
            })
        };
        self.config = self.param_states.load(state, kernel, "step", read_config, read_state)?;
        Ok(())
    }
}

/// The per-step scalars of one Adam update, as fastai computes them (in f64, then used in f32).
type AdamScalars = wick_nn::ops::AdamStep;

/// fastai's scalars for one Adam step of a parameter.
fn adam_scalars(config: &AdamConfig, do_wd: bool, step: u64) -> AdamScalars {
    let grad_damp = 1.0 - config.mom;
    let sqr_damp = 1.0 - config.sqr_mom;
    let debias1 = debias(config.mom, grad_damp, step);
    let debias2 = debias(config.sqr_mom, sqr_damp, step);
    AdamScalars {
        decay_factor: decay_factor(config.lr, config.wd, do_wd),
        mom: config.mom,
        grad_damp,
        sqr_mom: config.sqr_mom,
        sqr_damp,
        debias2,
        step_size: -config.lr / debias1,
        eps: config.eps,
    }
}

/// fastai `debias(mom, damp, step) = damp·(1 − mom^step)/(1 − mom)`, in its operation order.
fn debias(mom: f64, damp: f64, step: u64) -> f64 {
    damp * (1.0 - mom.powf(step as f64)) / (1.0 - mom)
}

/// fastai `weight_decay`: multiply by `1 − lr·wd` when `do_wd and wd != 0`.
fn decay_factor(lr: f64, wd: f64, do_wd: bool) -> Option<f64> {
    (do_wd && wd != 0.0).then_some(1.0 - lr * wd)
}

fn tensor_ops_adam(
    var: &Var,
    grad: &Tensor,
    state: &mut AdamState,
    s: AdamScalars,
) -> candle::Result<()> {
    let (decayed, grad) = tensor_ops_inputs(var, grad, s.decay_factor)?;
    let grad_avg = state.grad_avg.device_tensor(var)?;
    let sqr_avg = state.sqr_avg.device_tensor(var)?;
    // grad_avg.mul_(mom).add_(g, alpha=1-mom)
    let grad_avg = (grad_avg.affine(s.mom, 0.0)? + grad.affine(s.grad_damp, 0.0)?)?;
    // sqr_avg.mul_(sqr_mom).addcmul_(g, g, value=1-sqr_mom)
    let sqr_avg = (sqr_avg.affine(s.sqr_mom, 0.0)? + grad.affine(s.sqr_damp, 0.0)?.mul(&grad)?)?;
    // p.addcdiv_(grad_avg, (sqr_avg/debias2).sqrt() + eps, value=-lr/debias1)
    let denominator = (sqr_avg.affine(1.0 / s.debias2, 0.0)?.sqrt()? + s.eps)?;
    let updated = (decayed + grad_avg.affine(s.step_size, 0.0)?.div(&denominator)?)?;
    var.set(&updated)?;
    state.grad_avg = Buffer::Device(grad_avg);
    state.sqr_avg = Buffer::Device(sqr_avg);
    Ok(())
}

fn fused_adam(
    var: &Var,
    grad: &Tensor,
    grad_avg: &mut [f32],
    sqr_avg: &mut [f32],
    scalars: AdamScalars,
) -> candle::Result<()> {
    wick_nn::ops::adam_step(var.as_tensor(), grad, grad_avg, sqr_avg, scalars)
}

// ---------------------------------------------------------------------------------------------
// SGD
// ---------------------------------------------------------------------------------------------

/// Hyper-parameters of fastai's `SGD` (with `decouple_wd=True`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum. As in fastai, a zero momentum at construction builds plain SGD for good: no
    /// momentum buffer, and later `set_mom` values are ignored.
    pub mom: f64,
    /// Decoupled weight decay: `p ← p·(1 − lr·wd)` for parameters with `do_wd`.
    pub wd: f64,
    /// Which code computes the update.
    pub kernel: StepKernel,
}

impl SgdConfig {
    /// fastai `SGD(params, lr)`: mom 0, wd 0.
    pub fn fastai_defaults(lr: f64) -> Self {
        Self { lr, mom: 0.0, wd: 0.0, kernel: StepKernel::FusedCpu }
    }
}

/// fastai's `SGD`: `p ← p·(1 − lr·wd)` if `do_wd`; then with momentum `m ← mom·m + g`,
/// `p ← p − lr·m` (no dampening, m starts at 0), or without it `p ← p − lr·g`.
#[derive(Debug)]
pub struct Sgd {
    /// Each parameter's momentum buffer (`grad_avg`); never created without momentum.
    param_states: ParamStates<Buffer>,
    config: SgdConfig,
    momentum: bool,
}

impl Sgd {
    /// An SGD over `params` (sorted by name here), with no state yet.
    pub fn new(params: Vec<OptimParam>, config: SgdConfig) -> Result<Self, OptimError> {
        let param_states = ParamStates::new(params)?;
        Ok(Self { param_states, config, momentum: config.mom != 0.0 })
    }

    /// The current hyper-parameters.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<(), OptimError> {
        let config = self.config;
        let momentum = self.momentum;
        self.param_states.update_each(grads, config.kernel, |param, grad, path, slot| {
            let scalars = SgdScalars {
                decay_factor: decay_factor(config.lr, config.wd, param.do_wd),
                mom: config.mom,
                step_size: -config.lr,
            };
            let grad_avg = if momentum { Some(slot.get_or_insert(Buffer::Empty)) } else { None };
            match path {
                UpdatePath::Fused => {
                    let grad_avg =
                        grad_avg.map(|buffer| buffer.host_mut(&param.var)).transpose()?;
                    fused_sgd(&param.var, grad, grad_avg, scalars)
                }
                UpdatePath::TensorOps => tensor_ops_sgd(&param.var, grad, grad_avg, scalars),
            }
        })
    }

    shared_optimizer_methods!();

    fn state_dict(&self) -> Result<HashMap<String, Tensor>, OptimError> {
        let c = &self.config;
        let hypers = [("lr", c.lr), ("mom", c.mom), ("wd", c.wd)];
        self.param_states
            .state_dict(&hypers, |var, grad_avg| Ok(vec![("grad_avg", grad_avg.to_tensor(var)?)]))
    }

    fn load_state_dict(&mut self, state: &HashMap<String, Tensor>) -> Result<(), OptimError> {
        let kernel = self.config.kernel;
        let read_config = |reader: &mut StateReader<'_>| {
            Ok(SgdConfig {
                lr: reader.hyper("lr")?,
                mom: reader.hyper("mom")?,
                wd: reader.hyper("wd")?,
                kernel,
            })
        };
        let read_state = |reader: &mut StateReader<'_>, prefix: &str, var: &Var, path| {
            reader.buffer(&format!("{prefix}.grad_avg"), var, path)
        };
        self.config = self.param_states.load(state, kernel, "grad_avg", read_config, read_state)?;
        Ok(())
    }
}

type SgdScalars = wick_nn::ops::SgdStep;

fn tensor_ops_sgd(
    var: &Var,
    grad: &Tensor,
    grad_avg: Option<&mut Buffer>,
    s: SgdScalars,
) -> candle::Result<()> {
    let (decayed, grad) = tensor_ops_inputs(var, grad, s.decay_factor)?;
    let direction = match grad_avg {
        Some(buffer) => {
            // grad_avg.mul_(mom).add_(g, alpha=1.)
            let updated = (buffer.device_tensor(var)?.affine(s.mom, 0.0)? + &grad)?;
            *buffer = Buffer::Device(updated.clone());
            updated
        }
        None => grad,
    };
    // p.add_(direction, alpha=-lr)
    let updated = (decayed + direction.affine(s.step_size, 0.0)?)?;
    var.set(&updated)
}

fn fused_sgd(
    var: &Var,
    grad: &Tensor,
    grad_avg: Option<&mut [f32]>,
    scalars: SgdScalars,
) -> candle::Result<()> {
    wick_nn::ops::sgd_step(var.as_tensor(), grad, grad_avg, scalars)
}

// ---------------------------------------------------------------------------------------------
// Shared machinery: the parameter list and its states, state buffers, update-path choice,
// state-dict writing and reading.
// ---------------------------------------------------------------------------------------------

/// The parameters an optimizer updates (sorted by name, names unique) and each one's state of
/// type `S`: `None` until the parameter's first update, and again after a reset.
#[derive(Debug)]
struct ParamStates<S> {
    params: Vec<OptimParam>,
    states: Vec<Option<S>>,
}

impl<S> ParamStates<S> {
    /// `params` sorted by name, with no state yet.
    fn new(params: Vec<OptimParam>) -> Result<Self, OptimError> {
        let params = sorted_unique(params)?;
        let states = params.iter().map(|_| None).collect();
        Ok(Self { params, states })
    }

    /// The state of parameter `name`, if it exists and has state.
    fn state(&self, name: &str) -> Option<&S> {
        let index = self.params.iter().position(|param| param.name == name)?;
        self.states[index].as_ref()
    }

    /// Discards every state.
    fn clear(&mut self) {
        self.states.iter_mut().for_each(|state| *state = None);
    }

    /// Calls `update(param, grad, path, state)` for each parameter that has a gradient in
    /// `grads` (checked to have the parameter's shape); the others are skipped. A failed update
    /// is reported with its parameter's name (the first in name order when several fail).
    ///
    /// When every update takes the fused CPU path, the parameters are updated in parallel: each
    /// one's element loop is memory-bound and runs on one thread, and spreading the parameters
    /// over the threads (one parallel region a step) lets both cores stream memory. Each
    /// parameter's arithmetic is the same on any thread, so results do not depend on the thread
    /// count. Other paths (tensor ops, on any device) run one parameter at a time, in name
    /// order, and stop at the first failure; in parallel, a failure does not stop the other
    /// parameters' updates (every update then failed or ran, and the fit stops on the error).
    fn update_each(
        &mut self,
        grads: &GradStore,
        kernel: StepKernel,
        update: impl Fn(&OptimParam, &Tensor, UpdatePath, &mut Option<S>) -> candle::Result<()> + Sync,
    ) -> Result<(), OptimError>
    where
        S: Send,
    {
        let mut work = Vec::with_capacity(self.params.len());
        for (param, state) in self.params.iter().zip(self.states.iter_mut()) {
            let Some(grad) = grads.get(param.var.as_tensor()) else {
                continue;
            };
            check_grad_shape(param, grad)?;
            work.push((param, grad, UpdatePath::choose(kernel, &param.var), state));
        }
        let run = |(param, grad, path, state): &mut (
            &OptimParam,
            &Tensor,
            UpdatePath,
            &mut Option<S>,
        )| {
            update(param, grad, *path, state)
                .map_err(|source| OptimError::Tensor { param: param.name.clone(), source })
        };
        if work.iter().all(|(_, _, path, _)| *path == UpdatePath::Fused) {
            let results: Vec<Result<(), OptimError>> = work.par_iter_mut().map(run).collect();
            results.into_iter().collect::<Result<(), OptimError>>()
        } else {
            work.iter_mut().try_for_each(run)
        }
    }

    /// The state dict of [`Optimizer::state_dict`]: `hypers.<name>` for each of `hypers`, and for
    /// each parameter with state the tensors `write(var, state)` names, as `state.<param>.<name>`.
    fn state_dict(
        &self,
        hypers: &[(&str, f64)],
        write: impl Fn(&Var, &S) -> candle::Result<Vec<(&'static str, Tensor)>>,
    ) -> Result<HashMap<String, Tensor>, OptimError> {
        let mut dict = hyper_dict(hypers)?;
        for (param, state) in self.params.iter().zip(&self.states) {
            let Some(state) = state else { continue };
            let tensors = write(&param.var, state)
                .map_err(|source| OptimError::Tensor { param: param.name.clone(), source })?;
            for (name, tensor) in tensors {
                dict.insert(format!("state.{}.{name}", param.name), tensor);
            }
        }
        Ok(dict)
    }

    /// Loads a state dict written by [`ParamStates::state_dict`] and returns the config that
    /// `read_config(reader)` builds from its hyper-parameters. A parameter has state when
    /// `state.<param>.<marker>` is present, read by `read_state(reader, "state.<param>", var,
    /// path)`; the others get none. Every key must be read; on any error nothing changes.
    fn load<C>(
        &mut self,
        state: &HashMap<String, Tensor>,
        kernel: StepKernel,
        marker: &str,
        read_config: impl FnOnce(&mut StateReader<'_>) -> Result<C, OptimError>,
        read_state: impl Fn(&mut StateReader<'_>, &str, &Var, UpdatePath) -> Result<S, OptimError>,
    ) -> Result<C, OptimError> {
        let mut reader = StateReader::new(state);
        let config = read_config(&mut reader)?;
        let mut states = Vec::with_capacity(self.params.len());
        for param in &self.params {
            let prefix = format!("state.{}", param.name);
            if !reader.contains(&format!("{prefix}.{marker}")) {
                states.push(None);
                continue;
            }
            let path = UpdatePath::choose(kernel, &param.var);
            states.push(Some(read_state(&mut reader, &prefix, &param.var, path)?));
        }
        reader.finish()?;
        self.states = states;
        Ok(config)
    }
}

/// A moving-average buffer, zero until the first update. Stored as a host `Vec<f32>` for the fused
/// path and as a tensor on the parameter's device for the tensor-op path.
#[derive(Debug)]
enum Buffer {
    Empty,
    Host(Vec<f32>),
    Device(Tensor),
}

impl Buffer {
    /// The buffer as a host slice with one element per parameter element.
    fn host_mut(&mut self, var: &Var) -> candle::Result<&mut [f32]> {
        let values = match std::mem::replace(self, Buffer::Empty) {
            Buffer::Empty => vec![0.0; var.elem_count()],
            Buffer::Host(values) => values,
            Buffer::Device(tensor) => tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
        };
        *self = Buffer::Host(values);
        let Buffer::Host(values) = self else {
            // Unreachable: `self` was set to `Host` on the line above.
            candle::bail!("optimizer buffer is not on the host");
        };
        Ok(values)
    }

    /// The buffer as a tensor with the parameter's shape, dtype and device.
    fn device_tensor(&self, var: &Var) -> candle::Result<Tensor> {
        match self {
            Buffer::Empty => Tensor::zeros(var.shape(), var.dtype(), var.device()),
            Buffer::Host(values) => Tensor::from_slice(values, var.shape(), &Device::Cpu)?
                .to_dtype(var.dtype())?
                .to_device(var.device()),
            Buffer::Device(tensor) => Ok(tensor.clone()),
        }
    }

    /// A copy of the buffer for a state dict (never aliasing optimizer memory).
    fn to_tensor(&self, var: &Var) -> candle::Result<Tensor> {
        match self {
            Buffer::Device(tensor) => tensor.copy(),
            Buffer::Empty | Buffer::Host(_) => self.device_tensor(var),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpdatePath {
    Fused,
    TensorOps,
}

impl UpdatePath {
    fn choose(kernel: StepKernel, var: &Var) -> Self {
        let fusable = wick_nn::ops::fused_step_supported(var.as_tensor());
        match kernel {
            StepKernel::FusedCpu if fusable => UpdatePath::Fused,
            StepKernel::FusedCpu | StepKernel::TensorOps => UpdatePath::TensorOps,
        }
    }
}

fn sorted_unique(mut params: Vec<OptimParam>) -> Result<Vec<OptimParam>, OptimError> {
    params.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = params.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(OptimError::DuplicateName { name: pair[0].name.clone() });
    }
    let mut seen = HashMap::with_capacity(params.len());
    for param in &params {
        if let Some(first) = seen.insert(param.var.as_tensor().id(), &param.name) {
            return Err(OptimError::DuplicateVariable {
                first: first.clone(),
                second: param.name.clone(),
            });
        }
    }
    Ok(params)
}

fn check_grad_shape(param: &OptimParam, grad: &Tensor) -> Result<(), OptimError> {
    if grad.shape() == param.var.shape() {
        Ok(())
    } else {
        Err(OptimError::GradShape {
            param: param.name.clone(),
            expected: param.var.shape().clone(),
            grad: grad.shape().clone(),
        })
    }
}

/// The inputs of a tensor-op update: the parameter, multiplied by `decay_factor` when there is
/// one, and the gradient in the parameter's dtype. Both are detached: the update must not record
/// an autograd graph.
fn tensor_ops_inputs(
    var: &Var,
    grad: &Tensor,
    decay_factor: Option<f64>,
) -> candle::Result<(Tensor, Tensor)> {
    let grad = grad.to_dtype(var.dtype())?.detach();
    let param = var.as_detached_tensor();
    let decayed = match decay_factor {
        Some(factor) => param.affine(factor, 0.0)?,
        None => param,
    };
    Ok((decayed, grad))
}

fn hyper_dict(hypers: &[(&str, f64)]) -> Result<HashMap<String, Tensor>, OptimError> {
    hypers
        .iter()
        .map(|&(name, value)| {
            let key = format!("hypers.{name}");
            Tensor::new(value, &Device::Cpu)
                .map(|t| (key.clone(), t))
                .map_err(|source| OptimError::StateValue { key, source })
        })
        .collect()
}

fn step_tensor(step: u64) -> candle::Result<Tensor> {
    // Step counts stay far below i64::MAX (one per batch).
    let step = i64::try_from(step).unwrap_or(i64::MAX);
    Tensor::new(step, &Device::Cpu)
}

/// Reads a state dict and remembers which keys were used, so unknown keys can be reported.
struct StateReader<'a> {
    state: &'a HashMap<String, Tensor>,
    used: std::collections::HashSet<&'a str>,
}

impl<'a> StateReader<'a> {
    fn new(state: &'a HashMap<String, Tensor>) -> Self {
        Self { state, used: std::collections::HashSet::new() }
    }

    fn contains(&self, key: &str) -> bool {
        self.state.contains_key(key)
    }

    fn get(&mut self, key: &str) -> Result<&'a Tensor, OptimError> {
        let (stored_key, tensor) = self
            .state
            .get_key_value(key)
            .ok_or_else(|| OptimError::MissingKey { key: key.to_string() })?;
        self.used.insert(stored_key.as_str());
        Ok(tensor)
    }

    fn hyper(&mut self, name: &str) -> Result<f64, OptimError> {
        let key = format!("hypers.{name}");
        let tensor = self.get(&key)?;
        tensor
            .to_dtype(DType::F64)
            .and_then(|t| t.to_scalar::<f64>())
            .map_err(|source| OptimError::StateValue { key, source })
    }

    fn step(&mut self, key: &str) -> Result<u64, OptimError> {
        let tensor = self.get(key)?;
        let step = tensor
            .to_dtype(DType::I64)
            .and_then(|t| t.to_scalar::<i64>())
            .map_err(|source| OptimError::StateValue { key: key.to_string(), source })?;
        u64::try_from(step).map_err(|_| OptimError::StateValue {
            key: key.to_string(),
            source: candle::Error::Msg(format!("negative step count {step}")),
        })
    }

    fn buffer(&mut self, key: &str, var: &Var, path: UpdatePath) -> Result<Buffer, OptimError> {
        let tensor = self.get(key)?;
        if tensor.shape() != var.shape() {
            return Err(OptimError::StateShape {
                key: key.to_string(),
                expected: var.shape().clone(),
                actual: tensor.shape().clone(),
            });
        }
        let wrap = |source| OptimError::StateValue { key: key.to_string(), source };
        match path {
            UpdatePath::Fused => tensor
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map(Buffer::Host)
                .map_err(wrap),
            UpdatePath::TensorOps => tensor
                .to_dtype(var.dtype())
                .and_then(|t| t.to_device(var.device()))
                .and_then(|t| t.copy())
                .map(Buffer::Device)
                .map_err(wrap),
        }
    }

    fn finish(self) -> Result<(), OptimError> {
        let mut unused: Vec<&String> =
            self.state.keys().filter(|k| !self.used.contains(k.as_str())).collect();
        unused.sort();
        match unused.first() {
            Some(key) => Err(OptimError::UnexpectedKey { key: (*key).clone() }),
            None => Ok(()),
        }
    }
}
