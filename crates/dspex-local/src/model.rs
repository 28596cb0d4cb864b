//! The transformer: weights and a forward pass for the `llama` and `gemma3`
//! GGUF architectures, with the KV state kept outside the weights so that
//! concurrent generations share one copy of the model.
//!
//! Adapted from candle-transformers' `quantized_llama.rs` and
//! `quantized_gemma3.rs`, with these differences (each checked against
//! llama.cpp's `build_llama` / `build_gemma3`):
//!
//! * RoPE angles are computed for the positions being processed instead of
//!   a table over the whole training context (candle's gemma3 builds one
//!   over 131,072 positions: ~2.4 GB).
//! * Gemma 3's MLP uses GELU (tanh approximation) as llama.cpp does;
//!   candle's quantized gemma3 uses SiLU.
//! * Gemma 3's sliding-window mask follows llama.cpp (`p_q - p_k <
//!   window`), including for decode steps and for prompt chunks after a
//!   cached prefix (candle masks the cached part out entirely).
//! * Attention is computed here (`attend`), not with candle's matmul and
//!   softmax: grouped-query heads read their shared KV head directly, and
//!   each query visits only the keys it may see.
//! * Prompt tokens of Q4_1 matrices go through the int8 VNNI kernel
//!   (`vnni`) on CPUs that have it; elsewhere, and for other types, through
//!   dense f32 GEMM on weights dequantized on the fly (candle's quantized
//!   matmul runs one matrix-vector product per row, about 7x slower than
//!   GEMM for a 300-token prompt). Generated tokens (one row) use the
//!   quantized matrix-vector kernels, which read 4-8x fewer bytes.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, ggml_file};
use candle_core::{DType, Device, Module, Tensor};
use rayon::prelude::*;
use wide::f32x8;

use crate::error::{CandleContext, LocalError};
use crate::gguf::GgufFile;
use crate::kernels;
use crate::vnni::{self, QuantizedRows, RepackedQ4_1, Vnni};

/// What to do at load time with quantized types whose candle CPU kernels
/// are slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requantize {
    /// Keep every tensor in the type it is stored in.
    Keep,
    /// Re-quantize Q5_0 and Q5_1 matrices to Q8_0: candle has no AVX2
    /// `vec_dot` for them, Q8_0's is hand-written. Costs memory (8.5 bits
    /// per weight instead of 5-6). Q4_1 is kept: `kernels` has a fast
    /// matrix-vector product for it (decode 69-71 tok/s on SmolLM2 against
    /// 54-55 with Q8_0, measured on 2 cores).
    #[default]
    SlowTypes,
    /// Re-quantize every quantized matrix that is not Q8_0 to Q8_0: faster
    /// prompt processing on CPUs without AVX-512 VNNI (Q8_0 has a parallel
    /// dequantizer here; with VNNI, Q4_1's int8 kernel is faster), more
    /// memory.
    AllToQ8_0,
}

/// The architectures this crate implements.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "gemma3"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    Llama,
    Gemma3,
}

/// Hyper-parameters read from the GGUF.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) n_layer: usize,
    pub(crate) n_embd: usize,
    pub(crate) n_head: usize,
    pub(crate) n_kv_head: usize,
    pub(crate) head_dim: usize,
    pub(crate) eps: f32,
    pub(crate) train_context: usize,
}

/// A weight matrix, `(out, in)`.
struct Linear {
    qt: Arc<QTensor>,
    mm: QMatMul,
    /// A Q4_1 matrix repacked for the VNNI prompt kernel, on CPUs that
    /// have it (see `vnni`).
    packed: Option<(Vnni, RepackedQ4_1)>,
}

impl Linear {
    fn new(qt: QTensor, vnni: Option<Vnni>) -> Result<Self, LocalError> {
        let packed = match (vnni, qt.dtype(), qt.shape().dims2()) {
            (Some(cpu), GgmlDType::Q4_1, Ok((rows, k))) => {
                let data = qt.data().ctx("reading a Q4_1 matrix")?;
                RepackedQ4_1::new(&data, rows, k).map(|p| (cpu, p))
            }
            _ => None,
        };
        let qt = Arc::new(qt);
        let mm = QMatMul::from_arc(Arc::clone(&qt)).ctx("preparing a matmul")?;
        Ok(Self { qt, mm, packed })
    }

    /// Bytes held besides the quantized tensor.
    fn extra_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, |(_, p)| p.len_bytes())
    }

    /// `x` is `(rows, in)`. `dense` selects the prompt path: the VNNI
    /// kernel when the matrix was repacked for it, else GEMM on
    /// dequantized weights.
    fn forward(&self, x: &Tensor, dense: bool) -> candle_core::Result<Tensor> {
        self.forward_shared(x, dense, &mut None)
    }

    /// [`Self::forward`] for matrices that multiply the same `x` (Q, K and
    /// V; gate and up): `quantized` keeps `x` as the VNNI kernel takes it,
    /// so it is quantized once.
    fn forward_shared(
        &self,
        x: &Tensor,
        dense: bool,
        quantized: &mut Option<QuantizedRows>,
    ) -> candle_core::Result<Tensor> {
        if let (true, Some((cpu, packed))) = (dense, &self.packed) {
            let (rows, k) = x.dims2()?;
            let quantized = match quantized {
                Some(q) => q,
                None => {
                    let values = x.flatten_all()?.to_vec1::<f32>()?;
                    quantized.insert(QuantizedRows::new(*cpu, &values, k).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "activations of width {k} for a Q4_1 matrix"
                        ))
                    })?)
                }
            };
            let n = self.qt.shape().dims2()?.0;
            let mut out = vec![0f32; rows * n];
            vnni::matmul(*cpu, packed, quantized, &mut out).map_err(candle_core::Error::Msg)?;
            return Tensor::from_vec(out, (rows, n), &Device::Cpu);
        }
        match &self.mm {
            QMatMul::QTensor(_) if dense => {
                let w = dequantize(&self.qt)?.t()?;
                if x.dim(0)? == 1 {
                    // gemm takes a GEMV path for one row whose rounding
                    // differs from its GEMM rows (which do not depend on
                    // the row count): doubling the row keeps a prompt
                    // token's arithmetic identical whether it is processed
                    // alone (after a cached prefix) or with others.
                    Tensor::cat(&[x, x], 0)?.matmul(&w)?.narrow(0, 0, 1)
                } else {
                    x.matmul(&w)
                }
            }
            QMatMul::QTensor(_) if self.qt.dtype() == GgmlDType::Q4_1 && x.dim(0)? == 1 => {
                // One row (a generated token): the hand-written kernel reads
                // the 4.5-bit blocks as stored (see `kernels`).
                let (rows, k) = self.qt.shape().dims2()?;
                let input = x.flatten_all()?.to_vec1::<f32>()?;
                if input.len() != k || k % kernels::BLOCK != 0 {
                    candle_core::bail!(
                        "a Q4_1 matrix of width {k} times a vector of {}",
                        input.len()
                    );
                }
                let data = self.qt.data()?;
                let mut out = vec![0f32; rows];
                kernels::q4_1_matvec(&data, &kernels::QuantizedVector::new(&input), &mut out);
                Tensor::from_vec(out, (1, rows), &Device::Cpu)
            }
            mm => mm.forward(x),
        }
    }
}

/// Q8_0 block: f16 scale + 32 signed bytes.
const Q8_0_BLOCK_BYTES: usize = 34;
const Q8_0_BLOCK: usize = 32;

/// Decodes Q8_0 blocks (`src`) into `dst` (32 values per block). Plain
/// loops on bytes: safe, and LLVM vectorises the inner one.
fn q8_0_decode(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src
        .chunks_exact(Q8_0_BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(Q8_0_BLOCK))
    {
        if let [lo, hi, qs @ ..] = block {
            let d = half::f16::from_le_bytes([*lo, *hi]).to_f32();
            for (o, &q) in out.iter_mut().zip(qs) {
                *o = f32::from(i8::from_le_bytes([q])) * d;
            }
        }
    }
}

/// Dequantizes a matrix to f32. Q8_0 (the common case after
/// re-quantization) is decoded in parallel on the current rayon pool;
/// other types use candle's single-threaded dequantizer.
fn dequantize(qt: &QTensor) -> candle_core::Result<Tensor> {
    type Decoder = fn(&[u8], &mut [f32]);
    let (decode, block_bytes): (Decoder, usize) = match qt.dtype() {
        GgmlDType::Q8_0 => (q8_0_decode, Q8_0_BLOCK_BYTES),
        GgmlDType::Q4_1 => (kernels::q4_1_decode, kernels::Q4_1_BLOCK_BYTES),
        _ => return qt.dequantize(&Device::Cpu),
    };
    let (n, k) = qt.shape().dims2()?;
    let data = qt.data()?;
    let row_bytes = k / Q8_0_BLOCK * block_bytes;
    let mut out = vec![0f32; n * k];
    const ROWS: usize = 32;
    out.par_chunks_mut(ROWS * k)
        .zip(data.par_chunks(ROWS * row_bytes))
        .for_each(|(dst, src)| decode(src, dst));
    Tensor::from_vec(out, (n, k), &Device::Cpu)
}

/// RoPE frequencies for one group of layers.
struct Rope {
    /// `1 / base^(2i/d)` for `i < d/2`.
    inv_freq: Vec<f64>,
    /// Linear position scaling (1 / factor).
    pos_scale: f64,
    /// Interleaved pairs (llama, GGML "NORM") or halves (gemma, "NEOX").
    interleaved: bool,
}

impl Rope {
    fn new(dim: usize, base: f32, factor: f32, interleaved: bool) -> Self {
        let inv_freq = (0..dim / 2)
            .map(|i| 1.0 / f64::from(base).powf(2.0 * i as f64 / dim as f64))
            .collect();
        Self {
            inv_freq,
            pos_scale: 1.0 / f64::from(factor),
            interleaved,
        }
    }

    /// cos and sin, `(len, dim/2)`, for positions `pos..pos+len`.
    #[allow(clippy::cast_possible_truncation)]
    fn tables(&self, pos: usize, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in pos..pos + len {
            let p = p as f64 * self.pos_scale;
            for f in &self.inv_freq {
                let (s, c) = (p * f).sin_cos();
                cos.push(c as f32);
                sin.push(s as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (len, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (len, half), &Device::Cpu)?,
        ))
    }

    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        // (heads, len, dim) -> (1, heads, len, dim), as candle's kernels want.
        let x = x.unsqueeze(0)?;
        let y = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope(&x, cos, sin)?
        };
        y.squeeze(0)
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Silu,
    /// tanh approximation (ggml_gelu, HF `gelu_pytorch_tanh`).
    Gelu,
}

struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<Tensor>,
    /// Index into `Model::ropes`.
    rope: usize,
    /// Sliding-window size for local-attention layers.
    window: Option<usize>,
}

/// Shared, immutable weights.
pub(crate) struct Model {
    pub(crate) cfg: Config,
    embed: Arc<QTensor>,
    embed_scale: Option<f64>,
    output_norm: Tensor,
    output: Linear,
    layers: Vec<Layer>,
    ropes: Vec<Rope>,
    activation: Activation,
    attn_scale: f64,
    /// Bytes of weight storage (quantized blocks and f32 norms).
    pub(crate) weight_bytes: usize,
}

fn requantize(qt: QTensor, policy: Requantize) -> candle_core::Result<QTensor> {
    let dtype = qt.dtype();
    let float = matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
    let convert = match policy {
        Requantize::Keep => false,
        Requantize::SlowTypes => {
            matches!(dtype, GgmlDType::Q5_0 | GgmlDType::Q5_1)
        }
        Requantize::AllToQ8_0 => !float && dtype != GgmlDType::Q8_0,
    };
    let fits = qt
        .shape()
        .dims()
        .last()
        .is_some_and(|d| d % Q8_0_BLOCK == 0);
    if convert && fits {
        let f = qt.dequantize(&Device::Cpu)?;
        QTensor::quantize(&f, GgmlDType::Q8_0)
    } else {
        Ok(qt)
    }
}

/// A 1-D f32 tensor (norm weights).
fn vector(g: &mut GgufFile, name: &str) -> Result<Tensor, LocalError> {
    g.tensor(name)?
        .dequantize(&Device::Cpu)
        .ctx(&format!("dequantizing {name}"))
}

/// The largest model width (embedding, feed-forward, attention) accepted: far
/// above any model this crate can run on a CPU, far below an allocation that
/// would abort the process.
const MAX_DIM: usize = 1 << 18;

/// The largest attention head dimension accepted (real models use 64-256).
const MAX_HEAD_DIM: usize = 1 << 12;

/// A RoPE frequency base must be a positive finite number, or every logit is
/// NaN and greedy decoding silently picks token 0.
fn check_base(base: f32) -> Result<(), String> {
    if base.is_finite() && base > 0.0 {
        Ok(())
    } else {
        Err(format!("RoPE frequency base {base}"))
    }
}

fn check_dims(g: &GgufFile, name: &str, want: &[usize]) -> Result<(), LocalError> {
    let got = g.tensors.get(name).map(|t| t.dims.clone());
    if got.as_deref() == Some(want) {
        Ok(())
    } else {
        Err(LocalError::Corrupt {
            path: g.path().to_path_buf(),
            reason: format!("tensor {name} has shape {got:?}, expected {want:?}"),
        })
    }
}

impl Model {
    /// Reads the hyper-parameters and all weights.
    pub(crate) fn load(
        g: &mut GgufFile,
        arch: Arch,
        policy: Requantize,
        vnni: Option<Vnni>,
    ) -> Result<Self, LocalError> {
        let p = match arch {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
        };
        let n_layer = g.usize(&format!("{p}.block_count"))?;
        let n_embd = g.usize(&format!("{p}.embedding_length"))?;
        let n_head = g.usize(&format!("{p}.attention.head_count"))?;
        let n_kv_head = g.usize(&format!("{p}.attention.head_count_kv"))?;
        let eps = g.f32(&format!("{p}.attention.layer_norm_rms_epsilon"))?;
        let train_context = g.usize(&format!("{p}.context_length"))?;
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || n_layer == 0 {
            return Err(LocalError::Corrupt {
                path: g.path().to_path_buf(),
                reason: format!("{n_head} heads, {n_kv_head} KV heads, {n_layer} layers"),
            });
        }
        let head_dim = match g.usize(&format!("{p}.attention.key_length")) {
            Ok(d) => d,
            Err(_) => n_embd / n_head,
        };
        // Bounds before anything is sized from them: a crafted file must
        // not make the loader allocate (or divide, or chunk) by a wild or
        // zero dimension. Each layer needs its own tensors, so the tensor
        // count bounds the layer count.
        let file = g.path().to_path_buf();
        let corrupt = |reason: String| LocalError::Corrupt {
            path: file.clone(),
            reason,
        };
        let q_dim = n_head.checked_mul(head_dim);
        let kv_dim = n_kv_head.checked_mul(head_dim);
        if n_layer > g.tensors.len()
            || !(1..=MAX_DIM).contains(&n_embd)
            || !(1..=MAX_HEAD_DIM).contains(&head_dim)
            || q_dim.is_none_or(|d| d > MAX_DIM)
            || kv_dim.is_none_or(|d| d > MAX_DIM)
            || train_context == 0
            || !(eps.is_finite() && eps > 0.0)
        {
            return Err(corrupt(format!(
                "implausible hyper-parameters: {n_layer} layers for {} tensors, \
                 embedding {n_embd}, head dimension {head_dim}, {n_head} heads, \
                 context {train_context}, epsilon {eps}",
                g.tensors.len()
            )));
        }
        let (q_dim, kv_dim) = (n_head * head_dim, n_kv_head * head_dim);
        let unsupported = |feature: String| LocalError::Unsupported {
            path: g.path().to_path_buf(),
            feature,
        };
        if let Ok(v) = g.usize(&format!("{p}.attention.value_length"))
            && v != head_dim
        {
            return Err(unsupported(format!(
                "value_length {v} != key_length {head_dim}"
            )));
        }
        let rope_dim = g
            .usize(&format!("{p}.rope.dimension_count"))
            .unwrap_or(head_dim);
        if rope_dim != head_dim || head_dim % 2 != 0 {
            return Err(unsupported(format!(
                "partial rotary embedding ({rope_dim} of {head_dim} dimensions)"
            )));
        }
        if g.has_tensor("rope_freqs.weight") {
            return Err(unsupported(
                "per-dimension RoPE frequency factors (rope_freqs)".into(),
            ));
        }
        let rope_factor = match g.str(&format!("{p}.rope.scaling.type")) {
            None | Some("none") => 1.0,
            Some("linear") => g.f32(&format!("{p}.rope.scaling.factor")).unwrap_or(1.0),
            Some(other) => return Err(unsupported(format!("RoPE scaling {other:?}"))),
        };
        if !(rope_factor.is_finite() && rope_factor > 0.0) {
            return Err(unsupported(format!("RoPE scaling factor {rope_factor}")));
        }

        let cfg = Config {
            n_layer,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            eps,
            train_context,
        };

        let (ropes, activation, embed_scale, window, pattern) = match arch {
            Arch::Llama => {
                let base = g.f32("llama.rope.freq_base").unwrap_or(10_000.0);
                check_base(base).map_err(corrupt)?;
                (
                    vec![Rope::new(head_dim, base, rope_factor, true)],
                    Activation::Silu,
                    None,
                    None,
                    1,
                )
            }
            Arch::Gemma3 => {
                let base = g.f32("gemma3.rope.freq_base").unwrap_or(1_000_000.0);
                // llama.cpp hard-codes the local layers' base and the
                // 5-local-1-global pattern for Gemma 3; scaling applies to
                // the global layers only.
                let local_base = g.f32("gemma3.rope.local_freq_base").unwrap_or(10_000.0);
                let window = g.usize("gemma3.attention.sliding_window")?;
                check_base(base).map_err(corrupt)?;
                check_base(local_base).map_err(corrupt)?;
                if window == 0 {
                    return Err(corrupt("gemma3.attention.sliding_window is 0".into()));
                }
                let pattern = g
                    .usize("gemma3.attention.sliding_window_pattern")
                    .unwrap_or(6)
                    .max(1);
                (
                    vec![
                        Rope::new(head_dim, base, rope_factor, false),
                        Rope::new(head_dim, local_base, 1.0, false),
                    ],
                    Activation::Gelu,
                    Some((n_embd as f64).sqrt()),
                    Some(window),
                    pattern,
                )
            }
        };

        let vocab_rows = g
            .tensors
            .get("token_embd.weight")
            .and_then(|t| t.dims.first().copied())
            .unwrap_or(0);
        check_dims(g, "token_embd.weight", &[vocab_rows, n_embd])?;
        let mut weight_bytes = 0usize;
        let embed =
            requantize(g.tensor("token_embd.weight")?, policy).ctx("requantizing token_embd")?;
        weight_bytes += embed.storage_size_in_bytes();
        let embed = Arc::new(embed);
        if vocab_rows == 0 {
            return Err(corrupt("token_embd.weight has no rows".into()));
        }
        let output = if g.has_tensor("output.weight") {
            check_dims(g, "output.weight", &[vocab_rows, n_embd])?;
            let qt = requantize(g.tensor("output.weight")?, policy).ctx("requantizing output")?;
            weight_bytes += qt.storage_size_in_bytes();
            // The output projection only ever multiplies one row.
            Linear::new(qt, None)?
        } else {
            // Tied embeddings: the output projection is the embedding.
            let mm = QMatMul::from_arc(Arc::clone(&embed)).ctx("preparing the output matmul")?;
            Linear {
                qt: Arc::clone(&embed),
                mm,
                packed: None,
            }
        };
        let output_norm = vector(g, "output_norm.weight")?;

        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let b = |s: &str| format!("blk.{i}.{s}.weight");
            let ff = g
                .tensors
                .get(&b("ffn_gate"))
                .and_then(|t| t.dims.first().copied())
                .unwrap_or(0);
            if !(1..=MAX_DIM).contains(&ff) {
                return Err(corrupt(format!("{} has {ff} rows", b("ffn_gate"))));
            }
            for (name, dims) in [
                ("attn_q", [q_dim, n_embd]),
                ("attn_k", [kv_dim, n_embd]),
                ("attn_v", [kv_dim, n_embd]),
                ("attn_output", [n_embd, q_dim]),
                ("ffn_gate", [ff, n_embd]),
                ("ffn_up", [ff, n_embd]),
                ("ffn_down", [n_embd, ff]),
            ] {
                check_dims(g, &b(name), &dims)?;
            }
            let raw = [
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ]
            .iter()
            .map(|name| g.tensor(&b(name)))
            .collect::<Result<Vec<_>, _>>()?;
            // Requantizing is CPU-bound: do a layer's matrices in parallel.
            let mats = raw
                .into_par_iter()
                .map(|qt| requantize(qt, policy))
                .collect::<candle_core::Result<Vec<_>>>()
                .ctx("requantizing a layer")?;
            weight_bytes += mats
                .iter()
                .map(QTensor::storage_size_in_bytes)
                .sum::<usize>();
            let mats = mats
                .into_par_iter()
                .map(|qt| Linear::new(qt, vnni))
                .collect::<Result<Vec<_>, _>>()?;
            weight_bytes += mats.iter().map(Linear::extra_bytes).sum::<usize>();
            let mut mats = mats.into_iter().map(Ok);
            let mut next = || {
                mats.next().unwrap_or_else(|| {
                    Err(LocalError::Corrupt {
                        path: g.path().to_path_buf(),
                        reason: "internal: missing matrix".into(),
                    })
                })
            };
            let (wq, wk, wv, wo, gate, up, down) = (
                next()?,
                next()?,
                next()?,
                next()?,
                next()?,
                next()?,
                next()?,
            );
            let attn_norm = vector(g, &b("attn_norm"))?;
            let ffn_norm = vector(g, &b("ffn_norm"))?;
            let (q_norm, k_norm, post_attn_norm, post_ffn_norm, rope, layer_window) = match arch {
                Arch::Llama => (None, None, None, None, 0, None),
                Arch::Gemma3 => {
                    let local = (i + 1) % pattern != 0;
                    (
                        Some(vector(g, &b("attn_q_norm"))?),
                        Some(vector(g, &b("attn_k_norm"))?),
                        Some(vector(g, &b("post_attention_norm"))?),
                        Some(vector(g, &b("post_ffw_norm"))?),
                        usize::from(local),
                        if local { window } else { None },
                    )
                }
            };
            weight_bytes += 4 * n_embd * 2;
            layers.push(Layer {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm,
                gate,
                up,
                down,
                post_ffn_norm,
                rope,
                window: layer_window,
            });
        }

        Ok(Self {
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            cfg,
            embed,
            embed_scale,
            output_norm,
            output,
            layers,
            ropes,
            activation,
            weight_bytes,
        })
    }

    pub(crate) fn vocab_rows(&self) -> usize {
        self.embed.shape().dims().first().copied().unwrap_or(0)
    }

    /// Embedding rows for `tokens`, `(len, n_embd)`, dequantizing only the
    /// rows needed (a full f32 copy of Gemma's table would be 671 MB).
    fn embed(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let d = self.cfg.n_embd;
        let dtype = self.embed.dtype();
        let row_bytes = d / dtype.block_size() * dtype.type_size();
        let data = self.embed.data()?;
        let row = |t: u32| -> candle_core::Result<&[u8]> {
            let start = usize::try_from(t).map_err(candle_core::Error::wrap)? * row_bytes;
            data.get(start..start + row_bytes)
                .ok_or_else(|| candle_core::Error::Msg(format!("token {t} outside the embedding")))
        };
        if dtype == GgmlDType::Q8_0 {
            let mut out = vec![0f32; tokens.len() * d];
            for (&t, dst) in tokens.iter().zip(out.chunks_exact_mut(d)) {
                q8_0_decode(row(t)?, dst);
            }
            return Tensor::from_vec(out, (tokens.len(), d), &Device::Cpu);
        }
        // Other types: gather the rows' blocks into an aligned buffer and
        // let candle decode them.
        let mut words = vec![0u64; (tokens.len() * row_bytes).div_ceil(8)];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        for (&t, dst) in tokens.iter().zip(bytes.chunks_exact_mut(row_bytes)) {
            dst.copy_from_slice(row(t)?);
        }
        let bytes = bytes
            .get(..tokens.len() * row_bytes)
            .ok_or_else(|| candle_core::Error::Msg("embedding buffer".into()))?;
        ggml_file::qtensor_from_ggml(dtype, bytes, vec![tokens.len(), d], &Device::Cpu)?
            .dequantize(&Device::Cpu)
    }

    /// Runs `tokens` at positions `kv.len()..`, appends their keys and
    /// values to `kv`, and returns the logits of the last one. `prompt`
    /// selects the dense-GEMM path (see the module doc); it is used for
    /// every prompt token, however few, so that a prompt processed after a
    /// cached prefix goes through the same arithmetic as a cold one.
    pub(crate) fn forward(
        &self,
        tokens: &[u32],
        kv: &mut KvState,
        prompt: bool,
    ) -> Result<Vec<f32>, LocalError> {
        self.forward_inner(tokens, kv, prompt)
            .ctx("running the model")
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        kv: &mut KvState,
        dense: bool,
    ) -> candle_core::Result<Vec<f32>> {
        let len = tokens.len();
        if len == 0 {
            candle_core::bail!("no tokens to process");
        }
        let pos = kv.len;
        kv.reserve(pos + len)?;
        let total = pos + len;

        let mut x = self.embed(tokens)?;
        if let Some(s) = self.embed_scale {
            x = (x * s)?;
        }
        let tables = self
            .ropes
            .iter()
            .map(|r| r.tables(pos, len))
            .collect::<candle_core::Result<Vec<_>>>()?;
        for (layer, (k_buf, v_buf)) in self.layers.iter().zip(kv.layers.iter()) {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.cfg.eps)?;
            let (cos, sin) = tables
                .get(layer.rope)
                .ok_or_else(|| candle_core::Error::Msg("rope table".into()))?;
            let attn = self.attention(layer, &h, (k_buf, v_buf), pos, (cos, sin), dense)?;
            let attn = match &layer.post_attn_norm {
                Some(w) => candle_nn::ops::rms_norm(&attn, w, self.cfg.eps)?,
                None => attn,
            };
            x = (x + attn)?;

            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.cfg.eps)?;
            let mut quantized = None;
            let gate = layer.gate.forward_shared(&h, dense, &mut quantized)?;
            let up = layer.up.forward_shared(&h, dense, &mut quantized)?;
            let act = match self.activation {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::Gelu => gate.gelu()?,
            };
            let mlp = layer.down.forward(&(act * up)?, dense)?;
            let mlp = match &layer.post_ffn_norm {
                Some(w) => candle_nn::ops::rms_norm(&mlp, w, self.cfg.eps)?,
                None => mlp,
            };
            x = (x + mlp)?;
        }
        kv.len = total;

        let last = x.narrow(0, len - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.output_norm, self.cfg.eps)?;
        // One row: the quantized kernel is the fast path here.
        let logits = self.output.forward(&last, false)?;
        logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        h: &Tensor,
        (k_buf, v_buf): (&Tensor, &Tensor),
        pos: usize,
        (cos, sin): (&Tensor, &Tensor),
        dense: bool,
    ) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let (len, _) = h.dims2()?;
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((len, n, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()
        };
        let mut quantized = None;
        let mut q = heads(layer.wq.forward_shared(h, dense, &mut quantized)?, c.n_head)?;
        let mut k = heads(
            layer.wk.forward_shared(h, dense, &mut quantized)?,
            c.n_kv_head,
        )?;
        let v = heads(
            layer.wv.forward_shared(h, dense, &mut quantized)?,
            c.n_kv_head,
        )?;
        if let Some(w) = &layer.q_norm {
            q = candle_nn::ops::rms_norm(&q, w, c.eps)?;
        }
        if let Some(w) = &layer.k_norm {
            k = candle_nn::ops::rms_norm(&k, w, c.eps)?;
        }
        let rope = self
            .ropes
            .get(layer.rope)
            .ok_or_else(|| candle_core::Error::Msg("rope".into()))?;
        let q = (rope.apply(&q, cos, sin)? * self.attn_scale)?;
        let k = rope.apply(&k, cos, sin)?;

        // Append to the cache; attend over everything up to here.
        k_buf.slice_set(&k, 1, pos)?;
        v_buf.slice_set(&v, 1, pos)?;
        let out = {
            let (q_storage, q_layout) = q.storage_and_layout();
            let (k_storage, k_layout) = k_buf.storage_and_layout();
            let (v_storage, v_layout) = v_buf.storage_and_layout();
            let q = cpu_slice(&q_storage, q_layout)?;
            let keys = cpu_slice(&k_storage, k_layout)?;
            let values = cpu_slice(&v_storage, v_layout)?;
            let shape = AttentionShape {
                heads: c.n_head,
                kv_heads: c.n_kv_head,
                rows: len,
                dim: c.head_dim,
                capacity: k_buf.dim(1)?,
                pos,
                window: layer.window,
            };
            attend(q, keys, values, &shape)?
        };
        let out = Tensor::from_vec(out, (len, c.n_head * c.head_dim), &Device::Cpu)?;
        layer.wo.forward(&out, dense)
    }
}

/// A contiguous f32 CPU tensor's elements, borrowed.
fn cpu_slice<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::Storage::Cpu(cpu) = storage else {
        candle_core::bail!("attention expects CPU tensors");
    };
    if !layout.is_contiguous() {
        candle_core::bail!("attention expects contiguous tensors");
    }
    cpu.as_slice::<f32>()?
        .get(layout.start_offset()..)
        .ok_or_else(|| candle_core::Error::Msg("tensor offset outside its storage".into()))
}

/// The dimensions of one attention call.
struct AttentionShape {
    heads: usize,
    kv_heads: usize,
    /// Queries, at positions `pos..pos + rows`.
    rows: usize,
    dim: usize,
    /// Positions the key and value buffers hold (their second dimension).
    capacity: usize,
    pos: usize,
    /// Sliding window of local-attention layers.
    window: Option<usize>,
}

/// Causal scaled-dot-product attention of `rows` queries `q` (`(heads,
/// rows, dim)`, already scaled) over the cached keys and values
/// (`(kv_heads, capacity, dim)`, filled up to the last query). Returns
/// `(rows, heads * dim)`, the layout the output projection takes.
///
/// Why by hand rather than candle's matmul and softmax: each query visits
/// only the key groups it may see (the causal mask's upper triangle and the
/// window's outside are skipped), the exponential is a polynomial that
/// vectorises (`exp_in_place`; libm's `expf` is scalar), and the work is
/// tiled for the cache: a task takes up to `QUERY_BLOCK` queries of every
/// head sharing one KV head, and each group of keys or values, once in L1,
/// serves all of them (one query at a time streamed every key from L2,
/// which bounded it).
///
/// Every (query, head) result is computed in a fixed order that depends
/// on nothing else: each score sums its products the same way, and each
/// output element adds the values in key order with one rounding per step
/// (resuming from a stored partial sum is exact). So a prompt continued
/// after a cached prefix gets the bits a cold run gets.
///
/// GQA: query head `h` reads KV head `h / (heads / kv_heads)`.
fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    shape: &AttentionShape,
) -> candle_core::Result<Vec<f32>> {
    let &AttentionShape {
        heads,
        kv_heads,
        rows,
        dim,
        capacity,
        pos,
        window,
    } = shape;
    if kv_heads == 0
        || heads % kv_heads != 0
        || dim == 0
        || pos + rows > capacity
        || q.len() < heads * rows * dim
        || keys.len() < kv_heads * capacity * dim
        || values.len() < kv_heads * capacity * dim
    {
        candle_core::bail!(
            "attention of {rows} queries at {pos} ({heads} heads, {kv_heads} KV heads, \
             dimension {dim}) over a cache of {capacity}"
        );
    }
    let n_rep = heads / kv_heads;
    let blocks = rows.div_ceil(QUERY_BLOCK);
    let tiles: Vec<Vec<f32>> = (0..blocks * kv_heads)
        .into_par_iter()
        .map(|task| {
            let (block, g) = (task / kv_heads, task % kv_heads);
            let first = block * QUERY_BLOCK;
            let queries: Vec<Query<'_>> = (first..rows.min(first + QUERY_BLOCK))
                .flat_map(|i| {
                    let p = pos + i;
                    let start = window.map_or(0, |w| (p + 1).saturating_sub(w));
                    (0..n_rep).map(move |r| {
                        let h = g * n_rep + r;
                        Query {
                            q: q.get((h * rows + i) * dim..(h * rows + i + 1) * dim)
                                .unwrap_or_default(),
                            keys: start..p + 1,
                        }
                    })
                })
                .collect();
            let base = g * capacity * dim;
            let head = base..base + capacity * dim;
            attend_tile(
                &queries,
                keys.get(head.clone()).unwrap_or_default(),
                values.get(head).unwrap_or_default(),
                dim,
            )
        })
        .collect();
    // The tiles hold (query, head-in-group) rows; the output interleaves
    // the KV groups' heads within each query's row.
    let mut out = vec![0f32; rows * heads * dim];
    for (task, tile) in tiles.iter().enumerate() {
        let (block, g) = (task / kv_heads, task % kv_heads);
        for (k, row) in tile.chunks_exact(n_rep * dim).enumerate() {
            let i = block * QUERY_BLOCK + k;
            let at = (i * heads + g * n_rep) * dim;
            if let Some(o) = out.get_mut(at..at + n_rep * dim) {
                o.copy_from_slice(row);
            }
        }
    }
    Ok(out)
}

/// Queries (rows of the prompt) per attention task.
const QUERY_BLOCK: usize = 8;
/// Keys or values per group that a tile's queries share while it is in L1.
const KEY_GROUP: usize = 8;
const VALUE_GROUP: usize = 32;

/// One (query, head) of a tile: its vector and the key positions it sees.
struct Query<'a> {
    q: &'a [f32],
    keys: std::ops::Range<usize>,
}

/// Attention of `queries` over one KV head's `keys` and `values` (rows of
/// `dim`); returns their outputs, one row of `dim` per query in order.
fn attend_tile(queries: &[Query<'_>], keys: &[f32], values: &[f32], dim: usize) -> Vec<f32> {
    let lo = queries.iter().map(|x| x.keys.start).min().unwrap_or(0);
    let hi = queries.iter().map(|x| x.keys.end).max().unwrap_or(0);
    let width = hi - lo;
    // scores[n * width + (j - lo)]: query n, key j.
    let mut scores = vec![0f32; queries.len() * width];
    tile_scores(queries, keys, dim, lo..hi, &mut scores);
    let mut inverses = Vec::with_capacity(queries.len());
    for (x, row) in queries.iter().zip(scores.chunks_exact_mut(width.max(1))) {
        let Some(row) = row.get_mut(x.keys.start - lo..x.keys.end - lo) else {
            inverses.push(0.0);
            continue;
        };
        let max = max(row);
        exp_in_place(row, max);
        inverses.push(1.0 / sum(row));
    }
    let mut out = vec![0f32; queries.len() * dim];
    tile_values(queries, &scores, width, lo, values, &mut out);
    for (row, inverse) in out.chunks_exact_mut(dim).zip(inverses) {
        for o in row {
            *o *= inverse;
        }
    }
    out
}

/// The scores of every query over the keys `range`, `KEY_GROUP` keys at a
/// time: each group is loaded once for all queries, and for each query
/// eight accumulators share one query load and one transpose turns their
/// horizontal sums into vertical adds. Every score is summed the same way
/// (eight lanes over the query's blocks of eight, `reduce8`'s tree, the
/// tail last) whatever group it falls in. Groups a query cannot see are
/// skipped; scores outside its range are computed but never read.
fn tile_scores(
    queries: &[Query<'_>],
    keys: &[f32],
    dim: usize,
    range: std::ops::Range<usize>,
    scores: &mut [f32],
) {
    let n8 = dim / 8;
    let width = range.len();
    let lo = range.start;
    for group_start in range.step_by(KEY_GROUP) {
        let group_end = (group_start + KEY_GROUP).min(lo + width);
        // A short last group repeats its first key; those sums are never
        // stored.
        let key = |k: usize| {
            let j = if group_start + k < group_end {
                group_start + k
            } else {
                group_start
            };
            keys.get(j * dim..(j + 1) * dim).unwrap_or_default()
        };
        let k8: [&[[f32; 8]]; KEY_GROUP] =
            std::array::from_fn(|k| key(k).as_chunks::<8>().0.get(..n8).unwrap_or_default());
        let tails: [&[f32]; KEY_GROUP] =
            std::array::from_fn(|k| key(k).get(n8 * 8..).unwrap_or_default());
        for (x, row) in queries.iter().zip(scores.chunks_exact_mut(width.max(1))) {
            if group_start >= x.keys.end || group_end <= x.keys.start {
                continue;
            }
            let q8 = x.q.as_chunks::<8>().0.get(..n8).unwrap_or_default();
            // The common head sizes get a kernel with no bounds checks.
            let sums = match n8 {
                8 => fixed_group_scores::<8>(q8, &k8),
                16 => fixed_group_scores::<16>(q8, &k8),
                32 => fixed_group_scores::<32>(q8, &k8),
                _ => None,
            }
            .unwrap_or_else(|| group_scores(q8, &k8));
            let q_tail = x.q.get(n8 * 8..).unwrap_or_default();
            let at = group_start - lo;
            let stored = row
                .get_mut(at..at + (group_end - group_start))
                .unwrap_or_default();
            for ((s, sum), tail) in stored.iter_mut().zip(sums).zip(tails) {
                *s = if tail.is_empty() {
                    sum
                } else {
                    sum + tail_dot(q_tail, tail)
                };
            }
        }
    }
}

/// The eight dot products of a query with a group of keys, in blocks of
/// eight values: eight accumulators share each query load, and
/// `reduce8_each` sums them.
fn group_scores(q8: &[[f32; 8]], k8: &[&[[f32; 8]]; KEY_GROUP]) -> [f32; KEY_GROUP] {
    let mut acc = [f32x8::ZERO; KEY_GROUP];
    for (c, &q) in q8.iter().enumerate() {
        let q = f32x8::new(q);
        for (a, k) in acc.iter_mut().zip(k8) {
            *a = q.mul_add(f32x8::new(k.get(c).copied().unwrap_or_default()), *a);
        }
    }
    reduce8_each(acc)
}

/// `group_scores` for `N8` blocks known at compile time (the same
/// arithmetic, without bounds checks in the loop); `None` when a slice is
/// not `N8` blocks long.
fn fixed_group_scores<const N8: usize>(
    q8: &[[f32; 8]],
    k8: &[&[[f32; 8]]; KEY_GROUP],
) -> Option<[f32; KEY_GROUP]> {
    let q8: &[[f32; 8]; N8] = q8.try_into().ok()?;
    let mut keys = [&[[0f32; 8]; N8]; KEY_GROUP];
    for (fixed, k) in keys.iter_mut().zip(k8) {
        *fixed = (*k).try_into().ok()?;
    }
    let mut acc = [f32x8::ZERO; KEY_GROUP];
    for (c, &q) in q8.iter().enumerate() {
        let q = f32x8::new(q);
        for (a, k) in acc.iter_mut().zip(keys) {
            // c < N8, every array's length: the check compiles away.
            if let Some(&k) = k.get(c) {
                *a = q.mul_add(f32x8::new(k), *a);
            }
        }
    }
    Some(reduce8_each(acc))
}

/// `reduce8` of each of eight accumulators, as one transpose and vertical
/// adds: lane `l` of `t[i]` is lane `i` of accumulator `l`, so the adds
/// follow `reduce8`'s tree for all eight at once.
fn reduce8_each(acc: [f32x8; KEY_GROUP]) -> [f32; KEY_GROUP] {
    let [t0, t1, t2, t3, t4, t5, t6, t7] = f32x8::transpose(acc);
    (((t0 + t4) + (t2 + t6)) + ((t1 + t5) + (t3 + t7))).to_array()
}

/// `out[n] = sum_j weights[n][j] * value j` over each query's keys, in key
/// order: `VALUE_GROUP` values at a time (loaded once for all queries), and
/// 32 columns of a query's output accumulating in registers over them.
fn tile_values(
    queries: &[Query<'_>],
    scores: &[f32],
    width: usize,
    lo: usize,
    values: &[f32],
    out: &mut [f32],
) {
    const BLOCK: usize = 32;
    let Some(dim) = out.len().checked_div(queries.len()).filter(|&d| d > 0) else {
        return;
    };
    let blocks = dim / BLOCK;
    let hi = lo + width;
    for group_start in (lo..hi).step_by(VALUE_GROUP) {
        let group_end = (group_start + VALUE_GROUP).min(hi);
        for ((x, weights), out) in queries
            .iter()
            .zip(scores.chunks_exact(width.max(1)))
            .zip(out.chunks_exact_mut(dim))
        {
            let (from, to) = (group_start.max(x.keys.start), group_end.min(x.keys.end));
            if from >= to {
                continue;
            }
            let weights = weights.get(from - lo..to - lo).unwrap_or_default();
            let rows = values.get(from * dim..to * dim).unwrap_or_default();
            for b in 0..blocks {
                let cols = b * BLOCK..(b + 1) * BLOCK;
                let Some(o) = out.get_mut(cols.clone()) else {
                    break;
                };
                let o8 = o.as_chunks_mut::<8>().0;
                let mut acc: [f32x8; BLOCK / 8] =
                    std::array::from_fn(|c| f32x8::new(o8.get(c).copied().unwrap_or_default()));
                for (&w, v) in weights.iter().zip(rows.chunks_exact(dim)) {
                    let Some(v) = v
                        .get(cols.clone())
                        .and_then(|v| <&[f32; BLOCK]>::try_from(v).ok())
                    else {
                        break;
                    };
                    let w = f32x8::splat(w);
                    for (a, &v) in acc.iter_mut().zip(v.as_chunks::<8>().0) {
                        *a = w.mul_add(f32x8::new(v), *a);
                    }
                }
                for (o, a) in o8.iter_mut().zip(acc) {
                    *o = a.to_array();
                }
            }
            for col in blocks * BLOCK..dim {
                let Some(o) = out.get_mut(col) else {
                    break;
                };
                for (&w, v) in weights.iter().zip(rows.chunks_exact(dim)) {
                    *o = w.mul_add(v.get(col).copied().unwrap_or(0.0), *o);
                }
            }
        }
    }
}

/// The plain dot product of two tails shorter than eight.
#[inline(always)]
fn tail_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The sum of eight lanes as a tree (three vector adds, not seven
/// dependent scalar ones).
#[inline(always)]
fn reduce8([a, b, c, d, e, f, g, h]: [f32; 8]) -> f32 {
    let (w, x, y, z) = (a + e, b + f, c + g, d + h);
    (w + y) + (x + z)
}

/// The largest element (negative infinity for none), eight lanes at a
/// time. The maximum is exact, so the grouping cannot change it.
fn max(xs: &[f32]) -> f32 {
    let (x8, tail) = xs.as_chunks::<8>();
    let lanes = x8.iter().fold(f32x8::splat(f32::NEG_INFINITY), |m, &x| {
        m.max(f32x8::new(x))
    });
    lanes
        .to_array()
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Sum with eight running sums (vectorises; a fixed order).
fn sum(xs: &[f32]) -> f32 {
    let (x8, tail) = xs.as_chunks::<8>();
    let lanes = x8.iter().fold(f32x8::ZERO, |s, &x| s + f32x8::new(x));
    reduce8(lanes.to_array()) + tail.iter().sum::<f32>()
}

/// `x = exp(x - shift)` for every element, with Cephes' `expf` polynomial
/// on a Cody-Waite reduction (relative error about 2e-7). Only integer
/// and float arithmetic, so LLVM vectorises the loop.
fn exp_in_place(xs: &mut [f32], shift: f32) {
    // 1.5 * 2^23: adding it rounds to an integer held in the low bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    for x in xs.iter_mut() {
        let v = *x - shift;
        // exp underflows to ~1e-38 below -87; selects keep it vectorised.
        let v = if v < -87.0 { -87.0 } else { v };
        let v = if v > 88.0 { 88.0 } else { v };
        let t = v.mul_add(std::f32::consts::LOG2_E, ROUND);
        let n = t - ROUND;
        let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, v));
        let mut p = 1.987_569_1e-4f32;
        p = p.mul_add(r, 1.398_199_9e-3);
        p = p.mul_add(r, 8.333_452e-3);
        p = p.mul_add(r, 4.166_579_6e-2);
        p = p.mul_add(r, 1.666_666_5e-1);
        p = p.mul_add(r, 0.5);
        let y = (p * r).mul_add(r, r) + 1.0;
        // 2^n from n's bits: t's bits are ROUND's plus n.
        let bits = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
        *x = y * f32::from_bits(bits);
    }
}

/// One generation's keys and values: per layer, `(kv_heads, capacity,
/// head_dim)` buffers of which the first `len` positions are filled.
pub(crate) struct KvState {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    max: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Round buffer sizes up so that growing is rare.
const KV_CHUNK: usize = 256;

impl KvState {
    /// An empty state that may grow to `max` positions; `hint` positions
    /// are allocated up front (zeroed pages are only backed by memory once
    /// written).
    pub(crate) fn new(cfg: &Config, hint: usize, max: usize) -> candle_core::Result<Self> {
        let capacity = hint
            .div_ceil(KV_CHUNK)
            .saturating_mul(KV_CHUNK)
            .clamp(1, max.max(1));
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for _ in 0..cfg.n_layer {
            let shape = (cfg.n_kv_head, capacity, cfg.head_dim);
            layers.push((
                Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
                Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
            ));
        }
        Ok(Self {
            layers,
            len: 0,
            capacity,
            max,
            kv_heads: cfg.n_kv_head,
            head_dim: cfg.head_dim,
        })
    }

    /// A state holding the first `reuse` positions of `snapshot`.
    pub(crate) fn from_snapshot(
        cfg: &Config,
        snapshot: &[(Tensor, Tensor)],
        reuse: usize,
        hint: usize,
        max: usize,
    ) -> candle_core::Result<Self> {
        let capacity = hint
            .max(reuse)
            .div_ceil(KV_CHUNK)
            .saturating_mul(KV_CHUNK)
            .clamp(1, max.max(1));
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for (k, v) in snapshot {
            // Zeroed buffers, then each head's prefix copied in once: only
            // the prefix's pages are touched (a zeroed allocation is backed
            // lazily), where concatenating a zero pad wrote the whole
            // capacity (and narrowing then setting a slice copied twice).
            let mut pair = Vec::with_capacity(2);
            for cached in [k, v] {
                let (storage, layout) = cached.storage_and_layout();
                let from = cpu_slice(&storage, layout)?;
                let (heads, held, dim) = cached.dims3()?;
                if heads != cfg.n_kv_head || dim != cfg.head_dim || reuse > held {
                    candle_core::bail!(
                        "a snapshot of {heads} x {held} x {dim} cannot give {reuse} positions"
                    );
                }
                let mut buffer = vec![0f32; heads * capacity * dim];
                for (to, from) in buffer
                    .chunks_exact_mut(capacity * dim)
                    .zip(from.chunks_exact(held * dim))
                {
                    if let (Some(to), Some(from)) =
                        (to.get_mut(..reuse * dim), from.get(..reuse * dim))
                    {
                        to.copy_from_slice(from);
                    }
                }
                pair.push(Tensor::from_vec(
                    buffer,
                    (heads, capacity, dim),
                    &Device::Cpu,
                )?);
            }
            let (Some(v), Some(k)) = (pair.pop(), pair.pop()) else {
                candle_core::bail!("internal: a K/V pair");
            };
            layers.push((k, v));
        }
        if layers.len() != cfg.n_layer {
            candle_core::bail!("snapshot has {} layers", layers.len());
        }
        Ok(Self {
            layers,
            len: reuse,
            capacity,
            max,
            kv_heads: cfg.n_kv_head,
            head_dim: cfg.head_dim,
        })
    }

    /// Largest difference between the filled K/V of two states.
    #[cfg(test)]
    pub(crate) fn max_abs_diff(&self, other: &Self) -> f32 {
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            let a = a
                .narrow(1, 0, self.len)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>());
            let b = b
                .narrow(1, 0, self.len)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>());
            match (a, b) {
                (Ok(a), Ok(b)) => a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max),
                _ => f32::INFINITY,
            }
        };
        if self.len != other.len {
            return f32::INFINITY;
        }
        self.layers
            .iter()
            .zip(&other.layers)
            .map(|((k1, v1), (k2, v2))| diff(k1, k2).max(diff(v1, v2)))
            .fold(0.0, f32::max)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `needed` positions.
    fn reserve(&mut self, needed: usize) -> candle_core::Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        if needed > self.max {
            candle_core::bail!("{needed} positions exceed the context of {}", self.max);
        }
        let new_cap = needed
            .max(self.capacity * 2)
            .div_ceil(KV_CHUNK)
            .saturating_mul(KV_CHUNK)
            .min(self.max);
        let pad = Tensor::zeros(
            (self.kv_heads, new_cap - self.capacity, self.head_dim),
            DType::F32,
            &Device::Cpu,
        )?;
        for (k, v) in &mut self.layers {
            *k = Tensor::cat(&[&*k, &pad], 1)?.contiguous()?;
            *v = Tensor::cat(&[&*v, &pad], 1)?.contiguous()?;
        }
        self.capacity = new_cap;
        Ok(())
    }

    /// A compact copy of the first `len` filled positions, for the prefix
    /// cache.
    pub(crate) fn snapshot(&self, len: usize) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        if len > self.len {
            candle_core::bail!("a snapshot of {len} positions of {}", self.len);
        }
        self.layers
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.narrow(1, 0, len)?.force_contiguous()?,
                    v.narrow(1, 0, len)?.force_contiguous()?,
                ))
            })
            .collect()
    }
}

/// Bytes a snapshot of `len` positions takes.
pub(crate) fn kv_bytes(cfg: &Config, len: usize) -> usize {
    2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * len * size_of::<f32>()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod crafted {
    //! Hyper-parameters a crafted file could set to make loading allocate,
    //! divide or chunk by a wild value: each must be a typed error.
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{DType, Device, Tensor};

    use super::{Arch, Model, Requantize};
    use crate::LocalError;
    use crate::gguf::GgufFile;

    /// Loads a llama file whose metadata is SmolLM2's but for `overrides`.
    fn load_llama(overrides: &[(&str, Value)]) -> LocalError {
        let mut meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("llama.block_count".into(), Value::U32(1)),
            ("llama.embedding_length".into(), Value::U32(32)),
            ("llama.attention.head_count".into(), Value::U32(1)),
            ("llama.attention.head_count_kv".into(), Value::U32(1)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-5),
            ),
            ("llama.context_length".into(), Value::U32(64)),
        ];
        for (key, value) in overrides {
            meta.retain(|(k, _)| k != key);
            meta.push(((*key).to_owned(), value.clone()));
        }
        let zeros = Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&zeros, GgmlDType::Q8_0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crafted.gguf");
        let mut f = std::fs::File::create(&path).unwrap();
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &meta_refs, &[("token_embd.weight", &q)]).unwrap();
        drop(f);
        let mut g = GgufFile::open(&path).unwrap();
        match Model::load(
            &mut g,
            Arch::Llama,
            Requantize::default(),
            crate::vnni::Vnni::detect(),
        ) {
            Ok(_) => panic!("a crafted file loaded"),
            Err(e) => e,
        }
    }

    #[test]
    fn wild_or_zero_dimensions_are_corrupt_not_an_abort() {
        for overrides in [
            vec![("llama.block_count", Value::U64(1 << 40))],
            vec![("llama.attention.key_length", Value::U64(1 << 40))],
            vec![("llama.attention.key_length", Value::U32(0))],
            vec![("llama.embedding_length", Value::U32(0))],
            vec![("llama.embedding_length", Value::U64(u64::MAX))],
            vec![("llama.attention.head_count", Value::U64(u64::MAX / 2))],
            vec![("llama.context_length", Value::U32(0))],
            vec![(
                "llama.attention.layer_norm_rms_epsilon",
                Value::F32(f32::NAN),
            )],
            vec![("llama.rope.freq_base", Value::F32(0.0))],
        ] {
            let err = load_llama(&overrides);
            assert!(
                matches!(err, LocalError::Corrupt { .. }),
                "{overrides:?}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_tensor_is_named() {
        // Sane hyper-parameters get past the bounds: the file then lacks
        // the weights, and the error says which.
        let err = load_llama(&[]);
        assert!(
            err.to_string().contains("output_norm.weight is missing"),
            "{err}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_precision_loss)]
mod attention_tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7 + seed * 13) % 29) as f32 - 14.0) / 9.0)
            .collect()
    }

    /// Softmax attention in f64 over the visible keys, one query at a time.
    fn reference(q: &[f32], k: &[f32], v: &[f32], s: &AttentionShape) -> Vec<f32> {
        let n_rep = s.heads / s.kv_heads;
        let mut out = vec![0f32; s.rows * s.heads * s.dim];
        for i in 0..s.rows {
            let p = s.pos + i;
            let start = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
            for h in 0..s.heads {
                let base = (h / n_rep) * s.capacity * s.dim;
                let query = &q[(h * s.rows + i) * s.dim..][..s.dim];
                let scores: Vec<f64> = (start..=p)
                    .map(|j| {
                        let key = &k[base + j * s.dim..][..s.dim];
                        query
                            .iter()
                            .zip(key)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..s.dim {
                    let acc: f64 = (start..=p)
                        .zip(&weights)
                        .map(|(j, w)| w * f64::from(v[base + j * s.dim + d]))
                        .sum();
                    out[i * s.heads * s.dim + h * s.dim + d] = (acc / total) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_a_plain_softmax_with_gqa_and_a_window() {
        for window in [None, Some(5)] {
            // 6 heads over 2 KV heads, dimension 20 (not a multiple of 8),
            // 7 queries after 4 cached positions.
            let shape = AttentionShape {
                heads: 6,
                kv_heads: 2,
                rows: 7,
                dim: 20,
                capacity: 16,
                pos: 4,
                window,
            };
            let q = values(6 * 7 * 20, 1);
            let k = values(2 * 16 * 20, 2);
            let v = values(2 * 16 * 20, 3);
            let got = attend(&q, &k, &v, &shape).expect("shapes fit");
            let want = reference(&q, &k, &v, &shape);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{window:?} {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn a_query_gives_the_same_bits_however_the_prompt_was_split() {
        let shape = |rows, pos| AttentionShape {
            heads: 4,
            kv_heads: 2,
            rows,
            dim: 16,
            capacity: 12,
            pos,
            window: None,
        };
        let k = values(2 * 12 * 16, 5);
        let v = values(2 * 12 * 16, 6);
        // Ten queries at once, or the last three after a "cached" seven.
        let q = values(4 * 10 * 16, 7);
        let all = attend(&q, &k, &v, &shape(10, 0)).expect("fits");
        let tail: Vec<f32> = (0..4)
            .flat_map(|h| q[(h * 10 + 7) * 16..(h * 10 + 10) * 16].to_vec())
            .collect();
        let split = attend(&tail, &k, &v, &shape(3, 7)).expect("fits");
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&all[7 * 64..]), bits(&split));
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        let xs: Vec<f32> = (0..2000).map(|i| -90.0 + i as f32 * 0.0451).collect();
        let mut got = xs.clone();
        exp_in_place(&mut got, 0.0);
        for (x, g) in xs.iter().zip(&got) {
            let want = f64::from(*x).exp();
            if *x >= -87.0 {
                assert!(
                    (f64::from(*g) - want).abs() <= 4e-7 * want,
                    "exp({x}) = {g}, want {want}"
                );
            } else {
                assert!(*g <= 2e-38 && *g > 0.0, "exp({x}) = {g}");
            }
        }
    }

    #[test]
    fn a_cache_too_small_for_the_queries_is_an_error() {
        let shape = AttentionShape {
            heads: 2,
            kv_heads: 1,
            rows: 4,
            dim: 8,
            capacity: 3,
            pos: 0,
            window: None,
        };
        let err = attend(&[0.0; 64], &[0.0; 24], &[0.0; 24], &shape).expect_err("4 > 3");
        assert!(err.to_string().contains("over a cache of 3"), "{err}");
    }
}
