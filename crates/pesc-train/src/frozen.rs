//! Frozen base weights, and `x W^T` with a frozen `W` whose backward computes the input's
//! gradient only.
//!
//! candle's matmul backward computes both operands' gradients, tracked or not: for a frozen
//! base weight that is one more matmul per linear layer and a weight-sized gradient tensor
//! kept until the end of `backward` (about 1 GB for SmolLM2). Here the product is computed
//! without a graph and attached to `x` by a custom op whose backward is `grad W`.
//!
//! With `--base nf4` (QLoRA) a base weight stays in NF4 and is dequantized at each use, forward
//! and backward, so the frozen base costs half a byte per weight rather than four.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor};
use pesc_quant::nf4::Nf4Tensor;
use std::sync::{Arc, Mutex};

/// A frozen `[out, in]` base matrix.
#[derive(Clone)]
pub enum FrozenWeight {
    /// Held as a tensor.
    Tensor(Tensor),
    /// NF4 codes, dequantized (and rounded to `original`) at each use.
    Nf4 {
        /// The codes and block scales.
        codes: Arc<Nf4Tensor>,
        /// The dtype the values are rounded to after dequantization (bitsandbytes' output dtype).
        original: pesc_tensor::DType,
        /// `(out, in)`.
        shape: (usize, usize),
        /// Compute dtype.
        dtype: DType,
        /// Where the dequantized matrix goes.
        device: Device,
    },
}

impl FrozenWeight {
    /// `(out, in)`.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            FrozenWeight::Tensor(t) => t.dims2(),
            FrozenWeight::Nf4 { shape, .. } => Ok(*shape),
        }
    }

    /// The matrix (for NF4, a fresh dequantization).
    pub fn tensor(&self) -> candle_core::Result<Tensor> {
        match self {
            FrozenWeight::Tensor(t) => Ok(t.clone()),
            FrozenWeight::Nf4 { codes, original, shape, dtype, device } => {
                Tensor::from_vec(pesc_arch::dequantize_as(codes, *original), *shape, device)?.to_dtype(*dtype)
            }
        }
    }
}

/// `x W^T` (`x`: `(n, in)`, `w`: `(out, in)`); gradient to `x` only.
pub fn matmul_t(x: &Tensor, w: &FrozenWeight) -> candle_core::Result<Tensor> {
    let y = x.detach().matmul(&w.tensor()?.t()?)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op1(Attach { value: Mutex::new(Some(y)), w: w.clone() })
}

/// Hands its precomputed product to the graph once; backward multiplies by `w`.
struct Attach {
    value: Mutex<Option<Tensor>>,
    w: FrozenWeight,
}

impl Attach {
    /// The product, contiguous from offset 0 (as a custom op's output must be).
    fn take(&self) -> candle_core::Result<Tensor> {
        let y = self
            .value
            .lock()
            .ok()
            .and_then(|mut v| v.take())
            .ok_or_else(|| candle_core::Error::Msg("frozen matmul: the forward pass ran twice".into()))?;
        let (_, layout) = y.storage_and_layout();
        if layout.is_contiguous() && layout.start_offset() == 0 {
            Ok(y)
        } else {
            y.copy()
        }
    }
}

impl CustomOp1 for Attach {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => Err(candle_core::Error::Msg("frozen matmul: the product is not on the CPU".into())),
        }
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let y = self.take()?;
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((s.try_clone(layout)?, layout.shape().clone())),
            _ => Err(candle_core::Error::Msg("frozen matmul: the product is not on the GPU".into())),
        }
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w.tensor()?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use pesc_quant::nf4::{quantize, roundtrip, Nf4Options};

    /// `y = x W^T` and `d sum(y * c) / dx` through `matmul_t`, and through candle's matmul on `plain`.
    fn both(w: &FrozenWeight, plain: &Tensor) -> [(Vec<f32>, Vec<f32>); 2] {
        let dev = Device::Cpu;
        let xs: Vec<f32> = (0..3 * 70).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let c = Tensor::from_vec((0..3 * 5).map(|i| i as f32 - 7.0).collect::<Vec<_>>(), (3, 5), &dev).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            let x = Var::from_tensor(&Tensor::from_vec(xs.clone(), (3, 70), &dev).unwrap()).unwrap();
            let y = f(x.as_tensor());
            let grads = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let g = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            (y.flatten_all().unwrap().to_vec1().unwrap(), g)
        };
        [run(&|x| matmul_t(x, w).unwrap()), run(&|x| x.matmul(&plain.t().unwrap()).unwrap())]
    }

    #[test]
    fn frozen_matmul_equals_candles_for_tensors_and_nf4() {
        let values: Vec<f32> = (0..5 * 70).map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0).collect();
        let w = Tensor::from_vec(values.clone(), (5, 70), &Device::Cpu).unwrap();
        let [ours, theirs] = both(&FrozenWeight::Tensor(w.clone()), &w);
        assert_eq!(ours, theirs);
        let nf4 = FrozenWeight::Nf4 {
            codes: Arc::new(quantize(&values, Nf4Options::default()).unwrap()),
            original: pesc_tensor::DType::F32,
            shape: (5, 70),
            dtype: DType::F32,
            device: Device::Cpu,
        };
        let rounded = Tensor::from_vec(roundtrip(&values, Nf4Options::default()).unwrap(), (5, 70), &Device::Cpu).unwrap();
        let [ours, theirs] = both(&nf4, &rounded);
        assert_eq!(ours, theirs);
        assert_ne!(ours, both(&FrozenWeight::Tensor(w.clone()), &w)[0], "NF4 rounds the weights");
    }
}
