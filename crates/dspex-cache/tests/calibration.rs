//! Threshold behaviour on labelled pairs: a shipped fixture always, and QQP
//! (`shared/data/qqp-dev.jsonl`) when it is beside the repository.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};

use dspex_cache::semantic::calibrate::{TARGET_PRECISION, calibrate, pairwise, read_pairs};
use dspex_cache::{Embedder, LexicalEmbedder};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pairs.jsonl")
}

fn qqp() -> Option<PathBuf> {
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/qqp-dev.jsonl");
    std::env::var_os("DSPEX_TEST_QQP")
        .map(PathBuf::from)
        .into_iter()
        .chain([beside])
        .find(|p| p.is_file())
}

#[tokio::test]
async fn curves_are_monotone_and_the_threshold_separates_the_fixture() {
    let pairs = read_pairs(&fixture()).unwrap();
    assert_eq!(pairs.len(), 30);
    let embedder = LexicalEmbedder::new();
    let report = calibrate(&embedder, &pairs, None).await.unwrap();
    assert_eq!((report.pairs, report.duplicates), (30, 15));
    // A higher threshold never predicts more pairs.
    for w in report.pairwise.windows(2) {
        assert!(w[1].hit_rate <= w[0].hit_rate, "{w:?}");
        assert!(w[1].recall <= w[0].recall);
    }
    for w in report.retrieval.windows(2) {
        assert!(w[1].hit_rate <= w[0].hit_rate, "{w:?}");
    }
    // At the default threshold: near-verbatim repeats match, different
    // questions never do.
    let t = embedder.default_threshold();
    let at = report
        .pairwise
        .iter()
        .find(|p| (p.threshold - t).abs() < 1e-6)
        .unwrap();
    assert_eq!(at.false_positives, 0, "{at:?}");
    assert!(at.true_positives >= 8, "{at:?}");
    let suggested = report.suggested.unwrap();
    assert!(suggested <= t, "suggested {suggested}, default {t}");
}

#[tokio::test]
async fn lexical_default_threshold_is_at_least_80_percent_precise_on_qqp() {
    let Some(path) = qqp() else {
        // Without the data set the fixture test above still covers the
        // behaviour; make the absence visible in the output.
        eprintln!("qqp-dev.jsonl not found beside the repository; checked the fixture only");
        let pairs = read_pairs(&fixture()).unwrap();
        let report = calibrate(&LexicalEmbedder::new(), &pairs, None)
            .await
            .unwrap();
        assert!(report.suggested.is_some());
        return;
    };
    let pairs = read_pairs(&path).unwrap();
    assert!(pairs.len() >= 1000);
    let embedder = LexicalEmbedder::new();
    let curve = pairwise(&embedder, &pairs).await.unwrap();
    let t = embedder.default_threshold();
    let at = curve
        .iter()
        .find(|p| (p.threshold - t).abs() < 1e-6)
        .unwrap();
    assert!(at.precision >= TARGET_PRECISION, "{at:?}");
    assert!(at.true_positives + at.false_positives >= 10, "{at:?}");
}
