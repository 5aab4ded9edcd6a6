//! Seeded parameter initialisation. candle creates variables from a layer's `Init` hint with
//! its own CPU random generator, which cannot be seeded; [`seeded_var_builder`] gives layers a
//! `VarBuilder` whose new variables are drawn from a ChaCha generator with a known seed, in
//! construction order, and stored in a `VarMap` as usual. The hints themselves are candle's
//! (Kaiming normal with fan-in and gain √2 for conv and linear weights, constants for the
//! rest), which is exactly fastai's `init_cnn`.

use std::sync::Mutex;

use candle::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

/// A `VarMap` whose missing variables are created from their `Init` hint with a seeded RNG.
struct SeededVarMap {
    varmap: VarMap,
    rng: Mutex<ChaCha8Rng>,
}

/// A `VarBuilder` over `varmap` that draws every new variable from a ChaCha RNG seeded with
/// `seed`. Variables already in the map are returned as they are (so loading weights into a
/// map first and then building the model uses the loaded values).
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend =
        SeededVarMap { varmap: varmap.clone(), rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

/// Draws a tensor of `shape` for `init` from `rng` (f32 on the host, then moved).
pub fn draw_init(
    init: Init,
    shape: &Shape,
    rng: &mut ChaCha8Rng,
    dtype: DType,
    device: &Device,
) -> candle::Result<Tensor> {
    let n = shape.elem_count();
    let values: Vec<f32> = match init {
        Init::Const(value) => vec![value as f32; n],
        Init::Randn { mean, stdev } => normal(rng, mean, stdev, n)?,
        Init::Uniform { lo, up } => uniform(rng, lo, up, n)?,
        Init::Kaiming { dist, fan, non_linearity } => {
            let fan = fan.for_shape(shape);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(rng, 0.0, std, n)?,
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(rng, -bound, bound, n)?
                }
            }
        }
    };
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)
}

fn normal(rng: &mut ChaCha8Rng, mean: f64, stdev: f64, n: usize) -> candle::Result<Vec<f32>> {
    let distribution = Normal::new(mean, stdev)
        .map_err(|error| candle::Error::Msg(format!("init normal({mean}, {stdev}): {error}")))?;
    Ok((0..n).map(|_| distribution.sample(rng) as f32).collect())
}

fn uniform(rng: &mut ChaCha8Rng, lo: f64, up: f64, n: usize) -> candle::Result<Vec<f32>> {
    let distribution = Uniform::new(lo, up)
        .map_err(|error| candle::Error::Msg(format!("init uniform({lo}, {up}): {error}")))?;
    Ok((0..n).map(|_| distribution.sample(rng) as f32).collect())
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle::Result<Tensor> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle::Error::Msg("varmap lock poisoned".to_string()))?;
        if let Some(existing) = data.get(name) {
            if existing.shape() != &shape {
                candle::bail!(
                    "variable {name}: shape {:?} in the map, {:?} requested",
                    existing.shape(),
                    shape
                );
            }
            return Ok(existing.as_tensor().clone());
        }
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle::Error::Msg("init rng lock poisoned".to_string()))?;
        let var = Var::from_tensor(&draw_init(init, &shape, &mut rng, dtype, device)?)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> candle::Result<Tensor> {
        candle::bail!("variable {name}: a seeded VarMap needs a shape to create it")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().map(|data| data.contains_key(name)).unwrap_or(false)
    }
}
