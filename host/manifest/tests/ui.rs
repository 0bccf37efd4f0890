//! Golden tests: each `tests/ui/NAME.toml` beside `NAME.out`, which holds
//! the expected parse (valid manifests) or the expected error message.
//! Run with `BLESS=1` to rewrite the `.out` files after an intended change.

use std::path::Path;

#[test]
fn golden_manifests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        cases += 1;
        let text = std::fs::read_to_string(path).unwrap();
        let actual = match wasmpipe_manifest::Manifest::parse(&text) {
            Ok(m) => format!("OK\n{m:#?}\norder: {:?}\n", m.order()),
            Err(e) => format!("ERROR\n{e}\n"),
        };
        let out = path.with_extension("out");
        if bless {
            std::fs::write(&out, &actual).unwrap();
            continue;
        }
        let expected =
            std::fs::read_to_string(&out).unwrap_or_else(|_| panic!("missing {}; run with BLESS=1", out.display()));
        if expected != actual {
            failures.push(format!("{}:\n--- expected\n{expected}\n--- actual\n{actual}", path.display()));
        }
    }
    assert!(cases >= 10, "expected at least 10 golden cases, found {cases}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn config_becomes_json() {
    let m = wasmpipe_manifest::Manifest::parse(
        r#"
        version = 1
        name = "p"
        [stage.a]
        component = "a.wasm"
        inputs = ["x.csv"]
        [stage.a.config]
        ranges = { age = { min = 0, max = 120.5 } }
        names = ["a", "b"]
        when = 1979-05-27T07:32:00Z
        "#,
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&wasmpipe_manifest::config_json(&m.stages["a"].config)).unwrap();
    assert_eq!(json["ranges"]["age"]["max"], 120.5);
    assert_eq!(json["ranges"]["age"]["min"], 0);
    assert_eq!(json["names"][1], "b");
    assert_eq!(json["when"], "1979-05-27T07:32:00Z");
}

#[test]
fn missing_file_names_the_path() {
    let err = wasmpipe_manifest::Manifest::load(Path::new("/no/such/wasmpipe.toml")).unwrap_err();
    assert!(err.to_string().contains("/no/such/wasmpipe.toml"), "{err}");
}
