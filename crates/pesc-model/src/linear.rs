//! How a linear layer `y = x W^T (+ LoRA) (+ b)` is applied. The layer stack
//! is written once ([`crate::Transformer`]); what differs between the runner
//! and the trainer is only the kind of each linear layer:
//!
//! - [`Weight::Frozen`]: a matrix in the compute dtype. Its product is attached
//!   to the graph by a custom op whose backward computes the input's gradient
//!   only: candle's matmul backward would also compute the frozen weight's
//!   (one more matmul per layer and a weight-sized tensor kept until the end
//!   of `backward`). Without a graph (the runner) it is a plain matmul.
//! - [`Weight::Quantized`]: a GGUF block-quantized matrix ([`Blocks`]); no
//!   gradient. A few rows at a time (decoding) are multiplied as stored with
//!   ggml's kernels (the input rounded to 8-bit blocks, as llama.cpp does on
//!   CPU); a prefill of [`DEQUANTIZED_ROWS`] rows or more multiplies the
//!   input, unrounded, by the matrix dequantized exactly (ggml's values) for
//!   that product: one f32 matrix product, faster than block dot products
//!   row by row and closer to the unquantized model.
//! - [`Weight::Nf4`]: NF4 codes dequantized (bitsandbytes-exact) at each use,
//!   forward and backward, so a frozen base costs half a byte per weight
//!   (QLoRA); input-only gradient like `Frozen`.
//! - [`Weight::Trainable`]: a [`Var`]; gradients flow to it and to the input.
//!
//! Any of them may carry a LoRA pair ([`Lora`]) and a bias.

use crate::Result;
use candle_core::backend::BackendStorage;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QMatMul};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Module, Shape, Storage, Tensor, Var};
use pesc_quant::nf4::Nf4Tensor;
use pesc_quant::GgmlType;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Input rows from which a block-quantized product dequantizes its matrix
/// (on CPU): below, ggml's block dot products cost less than the dequantization.
pub const DEQUANTIZED_ROWS: usize = 16;

/// A GGUF block-quantized matrix `[out, in]`.
#[derive(Clone)]
pub struct Blocks {
    matmul: QMatMul,
    ty: GgmlType,
    shape: (usize, usize),
}

impl Blocks {
    /// Tensor `name`: `bytes`, the matrix `[out, in]` in block type `ty` as a GGUF file stores it.
    pub fn new(name: &str, ty: GgmlType, bytes: &[u8], shape: (usize, usize), device: &Device) -> Result<Self> {
        let candle = candle_type(ty).ok_or_else(|| crate::ModelError::UnsupportedBlockType { tensor: name.into(), ty })?;
        let q = qtensor_from_ggml(candle, bytes, vec![shape.0, shape.1], device)?;
        Ok(Blocks { matmul: QMatMul::from_qtensor(q)?, ty, shape })
    }

    /// `x W^T` for `x` `[n, in]`, in `x`'s dtype, `x` being (part of) a batch of `tokens` rows.
    fn forward(&self, x: &Tensor, tokens: usize) -> candle_core::Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let y = match &self.matmul {
            QMatMul::QTensor(q) if x.device().is_cpu() && tokens >= DEQUANTIZED_ROWS => {
                let bytes = q.data()?;
                let (rows, cols) = self.shape;
                let row_bytes = bytes.len() / rows.max(1);
                let mut values = vec![0f32; rows * cols];
                values
                    .par_chunks_mut(cols * 64)
                    .zip(bytes.par_chunks(row_bytes * 64))
                    .try_for_each(|(dst, src)| pesc_quant::dequantize_into(self.ty, src, dst))
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                x32.matmul(&Tensor::from_vec(values, self.shape, x.device())?.t()?)?
            }
            mm => mm.forward(&x32)?,
        };
        y.to_dtype(x.dtype())
    }
}

/// candle's name of a block type it multiplies as stored.
fn candle_type(ty: GgmlType) -> Option<GgmlDType> {
    Some(match ty {
        GgmlType::Q4_0 => GgmlDType::Q4_0,
        GgmlType::Q4_1 => GgmlDType::Q4_1,
        GgmlType::Q5_0 => GgmlDType::Q5_0,
        GgmlType::Q5_1 => GgmlDType::Q5_1,
        GgmlType::Q8_0 => GgmlDType::Q8_0,
        GgmlType::Q2_K => GgmlDType::Q2K,
        GgmlType::Q3_K => GgmlDType::Q3K,
        GgmlType::Q4_K => GgmlDType::Q4K,
        GgmlType::Q5_K => GgmlDType::Q5K,
        GgmlType::Q6_K => GgmlDType::Q6K,
        _ => return None,
    })
}

/// An NF4 matrix held as codes.
#[derive(Clone)]
pub struct Nf4Weight {
    /// The codes and block scales.
    pub codes: Arc<Nf4Tensor>,
    /// The dtype values are rounded to after dequantization (bitsandbytes' output dtype).
    pub original: pesc_tensor::DType,
    /// `(out, in)`.
    pub shape: (usize, usize),
    /// Compute dtype.
    pub dtype: DType,
    /// Where the dequantized matrix goes.
    pub device: Device,
}

/// The weight matrix `[out, in]` of a linear layer, and how it is applied.
#[derive(Clone)]
pub enum Weight {
    /// Held as a tensor; frozen (input-only gradient).
    Frozen(Tensor),
    /// GGUF block-quantized; no gradient.
    Quantized(Blocks),
    /// NF4 codes, dequantized at each use; frozen (input-only gradient).
    Nf4(Nf4Weight),
    /// Trained: gradients flow to it.
    Trainable(Var),
}

impl Weight {
    /// The matrix as a tensor (for NF4, a fresh dequantization); `None` for a block-quantized one.
    fn matrix(&self) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(match self {
            Weight::Frozen(t) => t.clone(),
            Weight::Nf4(q) => Tensor::from_vec(pesc_hf::dequantize_as(&q.codes, q.original), q.shape, &q.device)?.to_dtype(q.dtype)?,
            Weight::Trainable(v) => v.as_tensor().clone(),
            Weight::Quantized(_) => return Ok(None),
        }))
    }
}

/// A LoRA pair: `A [r, in]`, `B [out, r]`, the delta `x A^T B^T` scaled by `scale`.
#[derive(Clone)]
pub struct Lora {
    /// `lora_A`.
    pub a: Var,
    /// `lora_B`.
    pub b: Var,
    /// `alpha / r`.
    pub scale: f64,
}

/// A linear layer.
#[derive(Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    lora: Option<Lora>,
}

impl Linear {
    /// A layer without LoRA.
    #[must_use]
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Self {
        Linear { weight, bias, lora: None }
    }

    /// The weight.
    #[must_use]
    pub fn weight(&self) -> &Weight {
        &self.weight
    }

    /// `(out, in)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match &self.weight {
            Weight::Frozen(t) => t.dims2()?,
            Weight::Trainable(v) => v.as_tensor().dims2()?,
            Weight::Nf4(q) => q.shape,
            Weight::Quantized(b) => b.shape,
        })
    }

    /// Adds a LoRA pair (replacing any).
    pub fn set_lora(&mut self, lora: Lora) {
        self.lora = Some(lora);
    }

    /// Makes the weight trainable, starting from its values (in the compute dtype); returns it.
    pub fn make_trainable(&mut self) -> Result<Var> {
        if let Weight::Trainable(v) = &self.weight {
            return Ok(v.clone());
        }
        let values = self.weight.matrix()?.ok_or(crate::ModelError::QuantizedTrainable)?;
        let var = Var::from_tensor(&values)?;
        self.weight = Weight::Trainable(var.clone());
        Ok(var)
    }

    /// `x W^T`, plus the LoRA delta and the bias when present; `x` is `[n, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_in(x, x.dim(0)?)
    }

    /// [`Linear::forward`] of rows `x` taken from a batch of `tokens` rows (an
    /// expert's share): a block-quantized product is computed as for the whole
    /// batch (see [`DEQUANTIZED_ROWS`]), so every token of a prefill gets the same arithmetic.
    pub fn forward_in(&self, x: &Tensor, tokens: usize) -> Result<Tensor> {
        let mut y = match &self.weight {
            Weight::Frozen(_) | Weight::Nf4(_) => frozen_matmul(x, &self.weight)?,
            Weight::Quantized(b) => b.forward(x, tokens)?,
            Weight::Trainable(w) => x.matmul(&w.as_tensor().t()?)?,
        };
        if let Some(l) = &self.lora {
            y = (y + (x.matmul(&l.a.as_tensor().t()?)?.matmul(&l.b.as_tensor().t()?)? * l.scale)?)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}

/// `x W^T` with a frozen `W`; the gradient reaches `x` only.
fn frozen_matmul(x: &Tensor, w: &Weight) -> candle_core::Result<Tensor> {
    let m = w.matrix()?.ok_or_else(|| candle_core::Error::Msg("frozen matmul of a block-quantized weight".into()))?;
    let y = x.detach().matmul(&m.t()?)?;
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op1(Attach { value: Mutex::new(Some(y)), w: w.clone() })
}

/// Hands its precomputed product to the graph once; backward multiplies by `w`.
struct Attach {
    value: Mutex<Option<Tensor>>,
    w: Weight,
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
        let m = self.w.matrix()?.ok_or_else(|| candle_core::Error::Msg("frozen matmul of a block-quantized weight".into()))?;
        Ok(Some(grad.matmul(&m)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pesc_quant::nf4::{quantize, roundtrip, Nf4Options};

    /// `y = x W^T` and `d sum(y * c) / dx` through `Linear`, and through candle's matmul on `plain`.
    fn both(w: &Weight, plain: &Tensor) -> [(Vec<f32>, Vec<f32>); 2] {
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
        let linear = Linear::new(w.clone(), None);
        [run(&|x| linear.forward(x).unwrap()), run(&|x| x.matmul(&plain.t().unwrap()).unwrap())]
    }

    #[test]
    fn frozen_matmul_equals_candles_for_tensors_and_nf4() {
        let values: Vec<f32> = (0..5 * 70).map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0).collect();
        let w = Tensor::from_vec(values.clone(), (5, 70), &Device::Cpu).unwrap();
        let [ours, theirs] = both(&Weight::Frozen(w.clone()), &w);
        assert_eq!(ours, theirs);
        let nf4 = Weight::Nf4(Nf4Weight {
            codes: Arc::new(quantize(&values, Nf4Options::default()).unwrap()),
            original: pesc_tensor::DType::F32,
            shape: (5, 70),
            dtype: DType::F32,
            device: Device::Cpu,
        });
        let rounded = Tensor::from_vec(roundtrip(&values, Nf4Options::default()).unwrap(), (5, 70), &Device::Cpu).unwrap();
        let [ours, theirs] = both(&nf4, &rounded);
        assert_eq!(ours, theirs);
        assert_ne!(ours, both(&Weight::Frozen(w.clone()), &w)[0], "NF4 rounds the weights");
    }

    #[test]
    fn frozen_weights_get_no_gradient_and_trainable_ones_do() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (2, 3), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::from_vec(vec![0.5f32, -1., 2.], (1, 3), &dev).unwrap()).unwrap();
        let mut linear = Linear::new(Weight::Frozen(w.clone()), None);
        let frozen = linear.forward(x.as_tensor()).unwrap();
        let var = linear.make_trainable().unwrap();
        let trained = linear.forward(x.as_tensor()).unwrap();
        assert_eq!(frozen.to_vec2::<f32>().unwrap(), trained.to_vec2::<f32>().unwrap());
        let grads = trained.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(var.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), [[0.5, -1., 2.], [0.5, -1., 2.]]);
        assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), [[5., 7., 9.]]);
    }
}
