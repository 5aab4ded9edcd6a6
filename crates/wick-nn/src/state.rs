//! [`ModelState`]: the state a module keeps outside its `VarMap` (PyTorch's
//! `get_extra_state`/`set_extra_state`), such as the BatchNorm step counter PyTorch calls
//! `num_batches_tracked`. Whoever saves or snapshots a model (wick-train's checkpoints and
//! lr_find) saves this too, so a resumed or restored model is the same model, bit for bit.

use std::collections::HashMap;

use candle::Tensor;

/// State a model keeps outside its `VarMap` that its arithmetic or its export depends on.
///
/// The defaults describe a model with no such state: it saves nothing, and loading refuses any
/// tensor (a checkpoint of a model that had state does not silently lose it).
pub trait ModelState {
    /// The state as named tensors (CPU or device; the names are the model's own).
    ///
    /// # Errors
    /// A tensor operation failed.
    fn save_state(&self) -> candle::Result<HashMap<String, Tensor>> {
        Ok(HashMap::new())
    }

    /// Restores what [`ModelState::save_state`] returned.
    ///
    /// # Errors
    /// A tensor is missing, unknown or malformed.
    fn load_state(&self, tensors: &HashMap<String, Tensor>) -> candle::Result<()> {
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        match names.first() {
            None => Ok(()),
            Some(_) => Err(candle::Error::Msg(format!(
                "this model keeps no state outside its variables, but got {}",
                names.iter().map(|name| name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

impl<M: ModelState + ?Sized> ModelState for Box<M> {
    fn save_state(&self) -> candle::Result<HashMap<String, Tensor>> {
        (**self).save_state()
    }

    fn load_state(&self, tensors: &HashMap<String, Tensor>) -> candle::Result<()> {
        (**self).load_state(tensors)
    }
}

impl<M: ModelState + ?Sized> ModelState for std::sync::Arc<M> {
    fn save_state(&self) -> candle::Result<HashMap<String, Tensor>> {
        (**self).save_state()
    }

    fn load_state(&self, tensors: &HashMap<String, Tensor>) -> candle::Result<()> {
        (**self).load_state(tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stateless;
    impl ModelState for Stateless {}

    #[test]
    fn a_stateless_model_saves_nothing_and_refuses_state() {
        assert!(Stateless.save_state().unwrap().is_empty());
        Stateless.load_state(&HashMap::new()).unwrap();
        let count = Tensor::new(3i64, &candle::Device::Cpu).unwrap();
        let given = HashMap::from([("num_batches_tracked".to_string(), count)]);
        let error = Stateless.load_state(&given).unwrap_err().to_string();
        assert!(error.contains("num_batches_tracked"), "{error}");
    }
}
