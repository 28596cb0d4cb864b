//! A defensive GGUF reader.
//!
//! candle has a GGUF parser, but it trusts the header: a corrupt string or
//! array length makes it allocate whatever the file says (an abort, not an
//! error), and a truncated file is only noticed when a tensor read fails
//! half-way through loading. This reader checks every length against the
//! bytes actually left in the file, validates all tensor extents up front
//! (so a truncated download is one clear error), and reads tensors one at a
//! time with plain `read` calls: no mmap, so no `unsafe` here.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, ggml_file};
use sha2::{Digest, Sha256};

use crate::error::{CandleContext, LocalError};

const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF" little-endian
const DEFAULT_ALIGNMENT: u64 = 32;
/// Refuse absurd counts before allocating for them.
const MAX_ENTRIES: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer value that fits a `u64`.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value as an `i64`.
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(i64::from(v)),
            Value::U16(v) => Some(i64::from(v)),
            Value::U32(v) => Some(i64::from(v)),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(i64::from(v)),
            Value::I16(v) => Some(i64::from(v)),
            Value::I32(v) => Some(i64::from(v)),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any numeric value as an `f32`.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    pub(crate) fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub(crate) fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub(crate) struct TensorInfo {
    pub(crate) dtype: GgmlDType,
    /// candle order: outermost first (GGUF stores innermost first).
    pub(crate) dims: Vec<usize>,
    /// Absolute offset in the file.
    pub(crate) offset: u64,
    pub(crate) size: usize,
}

/// A parsed GGUF header plus an open handle for reading tensors.
pub(crate) struct GgufFile {
    path: PathBuf,
    file: File,
    pub(crate) file_len: u64,
    pub(crate) metadata: HashMap<String, Value>,
    pub(crate) tensors: HashMap<String, TensorInfo>,
}

fn ggml_dtype(code: u32) -> Option<GgmlDType> {
    // The numbering of ggml's `enum ggml_type` (candle's own mapping is
    // crate-private).
    Some(match code {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// A byte reader that knows how many bytes are left in the file, so that
/// no length read from the file can make it allocate more than that.
struct Cursor<'a> {
    inner: BufReader<&'a File>,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl Cursor<'_> {
    fn corrupt(&self, reason: impl Into<String>) -> LocalError {
        LocalError::Corrupt {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn truncated(&self, what: &str) -> LocalError {
        LocalError::Truncated {
            path: self.path.to_path_buf(),
            reason: format!("the header ends inside {what} at byte {}", self.pos),
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LocalError> {
        let mut buf = [0u8; N];
        if self.remaining() < N as u64 {
            return Err(self.truncated(what));
        }
        self.inner
            .read_exact(&mut buf)
            .map_err(|source| LocalError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u8(&mut self, what: &str) -> Result<u8, LocalError> {
        Ok(u8::from_le_bytes(self.bytes::<1>(what)?))
    }
    fn u16(&mut self, what: &str) -> Result<u16, LocalError> {
        Ok(u16::from_le_bytes(self.bytes::<2>(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, LocalError> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, LocalError> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, LocalError> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.truncated(what));
        }
        // Real strings (token texts, chat templates) are at most kilobytes;
        // a sparse file could otherwise claim terabytes.
        if len > MAX_STRING_BYTES {
            return Err(self.corrupt(format!("{what} of {len} bytes")));
        }
        let len = usize::try_from(len).map_err(|_| self.corrupt("string length overflows"))?;
        let mut buf = vec![0u8; len];
        self.inner
            .read_exact(&mut buf)
            .map_err(|source| LocalError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        self.pos += len as u64;
        // GGUF strings should not be NUL-terminated, but some writers do it.
        while buf.last() == Some(&0) {
            buf.pop();
        }
        // Token texts of some models are not valid UTF-8 (partial bytes);
        // keep what can be kept, as llama.cpp does.
        Ok(String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, LocalError> {
        Ok(match ty {
            0 => Value::U8(self.u8("a u8 value")?),
            1 => Value::I8(i8::from_le_bytes(self.bytes::<1>("an i8 value")?)),
            2 => Value::U16(self.u16("a u16 value")?),
            3 => Value::I16(i16::from_le_bytes(self.bytes::<2>("an i16 value")?)),
            4 => Value::U32(self.u32("a u32 value")?),
            5 => Value::I32(i32::from_le_bytes(self.bytes::<4>("an i32 value")?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes::<4>("an f32 value")?)),
            7 => Value::Bool(self.u8("a bool value")? != 0),
            8 => Value::String(self.string("a string value")?),
            9 => {
                if depth > 2 {
                    return Err(self.corrupt("arrays nested too deeply"));
                }
                let elem_ty = self.u32("an array type")?;
                let count = self.u64("an array length")?;
                // Every element takes at least its encoded size: a count the
                // rest of the file cannot hold is corruption, not a reason
                // to allocate. The capacity is capped as well (a parsed
                // value is larger than its encoding), letting a real
                // vocabulary grow the vector as it is read.
                let min_size = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    9 => 12,
                    _ => 8,
                };
                if count.saturating_mul(min_size) > self.remaining() {
                    return Err(self.truncated("an array"));
                }
                let count =
                    usize::try_from(count).map_err(|_| self.corrupt("array length overflows"))?;
                let mut items = Vec::with_capacity(count.min(1 << 16));
                for _ in 0..count {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64("a u64 value")?),
            11 => Value::I64(i64::from_le_bytes(self.bytes::<8>("an i64 value")?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes::<8>("an f64 value")?)),
            other => return Err(self.corrupt(format!("unknown metadata value type {other}"))),
        })
    }
}

/// The longest metadata string accepted (16 MiB).
const MAX_STRING_BYTES: u64 = 16 << 20;

/// Hashes a whole file with SHA-256, streaming (the file may be large).
pub(crate) fn sha256_file(path: &Path) -> Result<String, LocalError> {
    let io = |source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl GgufFile {
    /// Opens and parses `path`'s header; validates every tensor's extent.
    pub(crate) fn open(path: &Path) -> Result<Self, LocalError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                LocalError::MissingFile {
                    path: path.to_path_buf(),
                }
            } else {
                LocalError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let file_len = file
            .metadata()
            .map_err(|source| LocalError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();

        let (metadata, tensors) = {
            let mut c = Cursor {
                inner: BufReader::with_capacity(1 << 16, &file),
                pos: 0,
                len: file_len,
                path,
            };
            if file_len < 4 {
                return Err(c.corrupt("not a GGUF file (too short)"));
            }
            let magic = c.u32("the magic")?;
            if magic != GGUF_MAGIC {
                return Err(c.corrupt(format!("not a GGUF file (magic {magic:#010x})")));
            }
            let version = c.u32("the version")?;
            if !(2..=3).contains(&version) {
                return Err(c.corrupt(format!("unsupported GGUF version {version}")));
            }
            let n_tensors = c.u64("the tensor count")?;
            let n_kv = c.u64("the metadata count")?;
            if n_tensors > MAX_ENTRIES || n_kv > MAX_ENTRIES {
                return Err(c.corrupt(format!(
                    "implausible counts: {n_tensors} tensors, {n_kv} metadata entries"
                )));
            }

            let mut metadata = HashMap::new();
            for _ in 0..n_kv {
                let key = c.string("a metadata key")?;
                let ty = c.u32("a metadata type")?;
                let value = c.value(ty, 0)?;
                metadata.insert(key, value);
            }

            let mut infos = Vec::new();
            for _ in 0..n_tensors {
                let name = c.string("a tensor name")?;
                let n_dims = c.u32("a tensor rank")?;
                if n_dims == 0 || n_dims > MAX_DIMS {
                    return Err(c.corrupt(format!("tensor {name} has rank {n_dims}")));
                }
                let mut dims = Vec::new();
                for _ in 0..n_dims {
                    let d = c.u64("a tensor dimension")?;
                    dims.push(
                        usize::try_from(d)
                            .map_err(|_| c.corrupt(format!("tensor {name}: dimension {d}")))?,
                    );
                }
                dims.reverse();
                let code = c.u32("a tensor type")?;
                let dtype = ggml_dtype(code)
                    .ok_or_else(|| c.corrupt(format!("tensor {name}: unknown type {code}")))?;
                let offset = c.u64("a tensor offset")?;
                infos.push((name, dims, dtype, offset));
            }

            let alignment = metadata
                .get("general.alignment")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_ALIGNMENT);
            if alignment == 0 || !alignment.is_power_of_two() {
                return Err(c.corrupt(format!("general.alignment {alignment}")));
            }
            let data_start = c.pos.div_ceil(alignment) * alignment;

            let mut tensors = HashMap::new();
            for (name, dims, dtype, offset) in infos {
                let elems = dims
                    .iter()
                    .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| c.corrupt(format!("tensor {name}: size overflows")))?;
                let block = dtype.block_size();
                if block == 0 || elems % block != 0 {
                    return Err(c.corrupt(format!(
                        "tensor {name}: {elems} elements is not a multiple of the block size {block}"
                    )));
                }
                let size = (elems / block)
                    .checked_mul(dtype.type_size())
                    .ok_or_else(|| c.corrupt(format!("tensor {name}: size overflows")))?;
                let start = data_start
                    .checked_add(offset)
                    .ok_or_else(|| c.corrupt(format!("tensor {name}: offset overflows")))?;
                let end = start.saturating_add(size as u64);
                if end > file_len {
                    return Err(LocalError::Truncated {
                        path: path.to_path_buf(),
                        reason: format!(
                            "tensor {name} needs bytes {start}..{end} but the file has {file_len}"
                        ),
                    });
                }
                tensors.insert(
                    name,
                    TensorInfo {
                        dtype,
                        dims,
                        offset: start,
                        size,
                    },
                );
            }
            (metadata, tensors)
        };

        Ok(Self {
            path: path.to_path_buf(),
            file,
            file_len,
            metadata,
            tensors,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned integer.
    pub(crate) fn usize(&self, key: &str) -> Result<usize, LocalError> {
        self.get(key)
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.missing(key))
    }

    /// A required float.
    pub(crate) fn f32(&self, key: &str) -> Result<f32, LocalError> {
        self.get(key)
            .and_then(Value::as_f32)
            .ok_or_else(|| self.missing(key))
    }

    pub(crate) fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub(crate) fn missing(&self, key: &str) -> LocalError {
        LocalError::Corrupt {
            path: self.path.clone(),
            reason: format!("metadata {key} is missing or has the wrong type"),
        }
    }

    pub(crate) fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Reads one tensor. The bytes go into a `u64` buffer so that candle's
    /// reinterpretation of them as blocks (which needs 2- or 4-byte
    /// alignment) is always aligned.
    pub(crate) fn tensor(&mut self, name: &str) -> Result<QTensor, LocalError> {
        let info = self.tensors.get(name).ok_or_else(|| LocalError::Corrupt {
            path: self.path.clone(),
            reason: format!("tensor {name} is missing"),
        })?;
        let (dtype, dims, offset, size) = (info.dtype, info.dims.clone(), info.offset, info.size);
        let io = |source| LocalError::Io {
            path: self.path.clone(),
            source,
        };
        let mut words = vec![0u64; size.div_ceil(8)];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let bytes = bytes.get_mut(..size).ok_or_else(|| LocalError::Corrupt {
            path: self.path.clone(),
            reason: format!("tensor {name}: buffer size"),
        })?;
        self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
        self.file.read_exact(bytes).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                LocalError::Truncated {
                    path: self.path.clone(),
                    reason: format!("tensor {name} ends past the end of the file"),
                }
            } else {
                LocalError::Io {
                    path: self.path.clone(),
                    source,
                }
            }
        })?;
        ggml_file::qtensor_from_ggml(dtype, bytes, dims, &candle_core::Device::Cpu)
            .ctx(&format!("decoding tensor {name}"))
    }
}
