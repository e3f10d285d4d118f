//! `x W^T` with a frozen `W` whose backward computes the input's gradient only.
//!
//! candle's matmul backward computes both operands' gradients, tracked or not: for a frozen
//! base weight that is one more matmul per linear layer and a weight-sized gradient tensor
//! kept until the end of `backward` (about 1 GB for SmolLM2). Here the product is computed
//! without a graph and attached to `x` by a custom op whose backward is `grad W`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use std::sync::Mutex;

/// `x W^T` (`x`: `(n, in)`, `w`: `(out, in)`); gradient to `x` only.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let y = x.detach().matmul(&w.t()?)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op1(Attach { value: Mutex::new(Some(y)), w: w.clone() })
}

/// Hands its precomputed product to the graph once; backward multiplies by `w`.
struct Attach {
    value: Mutex<Option<Tensor>>,
    w: Tensor,
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
        Ok(Some(grad.matmul(&self.w)?))
    }
}
