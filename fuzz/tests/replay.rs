//! Every input saved under `fuzz/corpus/TARGET/` (seeds, and anything
//! `make fuzz` found and kept), replayed through its target: none may
//! panic. A crash the fuzzer finds is added here once fixed.

use std::path::Path;

/// A fuzz target: bytes in, nothing out.
type Target = fn(&[u8]);

#[test]
fn the_saved_corpus_replays_cleanly() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: [(&str, Target); 6] = [
        ("manifest", wasmpipe_fuzz::manifest),
        ("records", wasmpipe_fuzz::records),
        ("csv", wasmpipe_fuzz::csv),
        ("jsonl", wasmpipe_fuzz::jsonl),
        ("parquet", wasmpipe_fuzz::parquet),
        ("kernels", wasmpipe_fuzz::kernels),
    ];
    for (name, target) in targets {
        let dir = corpus.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no corpus for {name}");
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", input.display());
        }
        eprintln!("{name}: {} inputs replayed", inputs.len());
    }
}
