//! Load errors on crafted files: no model needed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::io::Write;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use dspex_local::{LoadOptions, LocalError, LocalModel};

/// A small GGUF with one metadata entry and one tensor.
fn write_gguf(path: &Path, architecture: &str) {
    let t = Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
    let arch = Value::String(architecture.to_owned());
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &q)],
    )
    .unwrap();
}

fn load(path: &Path) -> LocalError {
    LocalModel::load(path, &LoadOptions::default()).unwrap_err()
}

#[test]
fn missing_file_names_the_path() {
    let err = load(Path::new("/nonexistent/model.gguf"));
    assert!(
        matches!(&err, LocalError::MissingFile { path } if path == Path::new("/nonexistent/model.gguf")),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/model.gguf"));
}

#[test]
fn unsupported_architecture_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    write_gguf(&path, "mamba");
    let err = load(&path);
    match &err {
        LocalError::UnsupportedArchitecture {
            path: p,
            architecture,
            supported,
        } => {
            assert_eq!(p, &path);
            assert_eq!(architecture, "mamba");
            assert!(supported.contains(&"llama") && supported.contains(&"gemma3"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("mamba") && msg.contains("llama") && msg.contains(path.to_str().unwrap()),
        "{msg}"
    );
}

#[test]
fn truncated_file_is_detected_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    write_gguf(&path, "llama");
    let bytes = std::fs::read(&path).unwrap();
    // The writer pads tensor data to 32 bytes: cut into the data itself.
    std::fs::write(&path, &bytes[..bytes.len() - 60]).unwrap();
    let err = load(&path);
    assert!(
        matches!(&err, LocalError::Truncated { path: p, .. } if p == &path),
        "{err:?}"
    );

    // Cut inside the header.
    std::fs::write(&path, &bytes[..40]).unwrap();
    let err = load(&path);
    assert!(
        matches!(&err, LocalError::Truncated { path: p, .. } if p == &path),
        "{err:?}"
    );
}

#[test]
fn garbage_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.gguf");
    std::fs::write(&path, b"this is not a model at all").unwrap();
    assert!(matches!(load(&path), LocalError::Corrupt { .. }));

    // A valid magic and version with an absurd string length: must be an
    // error, not a huge allocation.
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&0x4655_4747u32.to_le_bytes()).unwrap();
    f.write_all(&3u32.to_le_bytes()).unwrap();
    f.write_all(&0u64.to_le_bytes()).unwrap();
    f.write_all(&1u64.to_le_bytes()).unwrap();
    f.write_all(&(u64::MAX / 2).to_le_bytes()).unwrap();
    drop(f);
    assert!(matches!(load(&path), LocalError::Truncated { .. }));
}

#[test]
fn wrong_hash_is_reported_with_both_digests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_gguf(&path, "llama");
    let options = LoadOptions {
        expected_sha256: Some("00".repeat(32)),
        ..LoadOptions::default()
    };
    let err = LocalModel::load(&path, &options).unwrap_err();
    match &err {
        LocalError::HashMismatch {
            path: p,
            expected,
            actual,
        } => {
            assert_eq!(p, &path);
            assert_eq!(expected, &"00".repeat(32));
            assert_eq!(actual.len(), 64);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_array_count_the_file_cannot_hold_is_refused_before_allocating() {
    // 2^40 u64 elements claimed in a file of a few dozen bytes: the count
    // times the element size exceeds the file, whatever the count alone.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("array.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&0x4655_4747u32.to_le_bytes()).unwrap();
    f.write_all(&3u32.to_le_bytes()).unwrap();
    f.write_all(&0u64.to_le_bytes()).unwrap(); // tensors
    f.write_all(&1u64.to_le_bytes()).unwrap(); // metadata entries
    f.write_all(&3u64.to_le_bytes()).unwrap();
    f.write_all(b"key").unwrap();
    f.write_all(&9u32.to_le_bytes()).unwrap(); // an array
    f.write_all(&10u32.to_le_bytes()).unwrap(); // of u64
    f.write_all(&(1u64 << 40).to_le_bytes()).unwrap();
    f.write_all(&[0u8; 64]).unwrap();
    drop(f);
    assert!(matches!(load(&path), LocalError::Truncated { .. }));
}
