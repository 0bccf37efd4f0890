//! The HTML run report, opened in a real browser: each demo's report is
//! loaded by headless Chromium (Debian's `chromium`, which
//! `scripts/install-test-deps.sh` installs), screenshotted, and the page as
//! the browser parsed it is checked: every section is there, and the
//! plotted values are the metrics (the area under the plotted ROC curve is
//! the AUC the page prints, the heat map's counts are the confusion matrix,
//! the scatter has the sample's points).

use std::path::{Path, PathBuf};
use std::process::Command;

use wasmpipe_tests::repo;

fn wasmpipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wasmpipe"))
}

/// The browser: `$WASMPIPE_CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("WASMPIPE_CHROMIUM") {
        return path.into();
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for name in ["chromium", "chromium-browser"] {
            if dir.join(name).is_file() {
                return dir.join(name);
            }
        }
    }
    panic!("these tests need Chromium: `apt-get install chromium` (scripts/install-test-deps.sh does it)");
}

/// Load `page` in headless Chromium: the DOM it built, and a screenshot
/// (`shot`, 1280 pixels wide) of its first `height` pixels.
fn browse(page: &Path, shot: &Path, height: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let base = |cmd: &mut Command| {
        cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
            .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let url = format!("file://{}", page.display());
    let mut dump = Command::new(chromium());
    base(&mut dump);
    let dom = dump.arg("--dump-dom").arg(&url).output().unwrap();
    assert!(dom.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&dom.stderr));
    let mut screenshot = Command::new(chromium());
    base(&mut screenshot);
    let out = screenshot
        .arg(format!("--window-size=1280,{height}"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (width, tall) =
        (u32::from_be_bytes(png[16..20].try_into().unwrap()), u32::from_be_bytes(png[20..24].try_into().unwrap()));
    assert_eq!((width, tall), (1280, height));
    // A blank page compresses to almost nothing; a drawn one does not.
    assert!(png.len() > 60_000, "the screenshot is nearly blank ({} bytes)", png.len());
    String::from_utf8(dom.stdout).unwrap()
}

/// Run the demo `name` into `store`; the run's record.
fn run_demo(name: &str, store: &Path) -> serde_json::Value {
    let out = wasmpipe()
        .args(["run", &format!("examples/{name}/wasmpipe.toml"), "--parallelism", "2", "--store"])
        .arg(store)
        .current_dir(repo())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let run_id = stdout.lines().find_map(|l| l.strip_prefix("run ")?.split(' ').next()).unwrap();
    assert!(
        stderr.contains(&format!(
            "run report: file://{}",
            store.join("_runs").join(run_id).join("report.html").display()
        )),
        "{stderr}"
    );
    serde_json::from_slice(&std::fs::read(store.join("_runs").join(run_id).join("run.json")).unwrap()).unwrap()
}

/// The element of the DOM whose `id` is `id`, to its closing `</tag>`.
fn element<'a>(dom: &'a str, tag: &str, id: &str) -> &'a str {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no element #{id}"));
    let start = dom[..start].rfind(&format!("<{tag}")).unwrap();
    let end = dom[start..].find(&format!("</{tag}>")).unwrap_or_else(|| panic!("#{id} is not closed"));
    &dom[start..start + end]
}

/// The points of every `<polyline>` in `svg`, in pixels.
fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
    svg.split("<polyline")
        .skip(1)
        .map(|p| {
            let points = p.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
            points
                .split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

/// The numbers the page prints for metric `name`.
fn printed(dom: &str, stage: &str, name: &str) -> f64 {
    let block = element(dom, "div", &format!("metrics-{stage}"));
    let cell = block.split(&format!("data-metric=\"{name}\">")).nth(1).unwrap_or_else(|| panic!("no {name} printed"));
    cell.split('<').next().unwrap().replace(',', "").parse().unwrap()
}

/// The text of every `<text>` element in `svg`.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .map(|t| t.split_once('>').unwrap().1.split("</text>").next().unwrap().trim().to_string())
        .collect()
}

/// The heat map's cells, as drawn (row by row, after the labels), are the
/// confusion matrix of `report`.
fn check_heat_map(dom: &str, stage: &str, report: &serde_json::Value) {
    let cells: Vec<String> = report["confusion_matrix"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|n| n.to_string()))
        .collect();
    let shown = texts(element(dom, "figure", &format!("confusion-{stage}")));
    assert!(shown.len() > cells.len(), "{shown:?}");
    assert_eq!(shown[shown.len() - cells.len()..], cells[..], "the heat map's cells are not the matrix: {shown:?}");
}

fn check_sections(dom: &str, record: &serde_json::Value) {
    for section in ["graph", "timeline", "stages", "metrics", "lineage"] {
        assert!(dom.contains(&format!("<section id=\"{section}\"")), "no {section} section");
    }
    for stage in record["stages"].as_array().unwrap() {
        let name = stage["name"].as_str().unwrap();
        assert!(dom.contains(&format!("data-stage=\"{name}\"")), "{name} is not in the graph");
        assert!(dom.contains(&format!("<tr id=\"stage-{name}\"")), "{name} has no lineage row");
        assert!(dom.contains(stage["component"].as_str().unwrap()), "{name}'s component is not named");
    }
    let timeline = element(dom, "figure", "timeline-chart");
    let tasks: usize = record["stages"].as_array().unwrap().iter().map(|s| s["tasks"].as_array().unwrap().len()).sum();
    assert_eq!(timeline.matches("<rect").count() - 1, tasks, "one bar per task (and the background)");
}

#[test]
fn the_breast_cancer_report_plots_the_roc_curve_it_prints_the_auc_of() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let record = run_demo("breast_cancer", &store);
    let page = store.join("_runs").join(record["run_id"].as_str().unwrap()).join("report.html");
    let dom = browse(&page, &dir.path().join("breast_cancer.png"), 3000);
    check_sections(&dom, &record);
    assert!(dom.contains("<section id=\"validation\""), "no validation section");

    let evaluate = record["stages"].as_array().unwrap().iter().find(|s| s["name"] == "evaluate").unwrap();
    let auc = evaluate["report"]["roc_auc"].as_f64().unwrap();
    assert!((printed(&dom, "evaluate", "roc_auc") - auc).abs() < 1e-6);
    // The curve is the longest polyline; its ends are (0, 0) and (1, 1).
    let roc = element(&dom, "figure", "roc-evaluate");
    let curve = polylines(roc).into_iter().max_by_key(|p| p.len()).unwrap();
    let ((x0, y0), (x1, y1)) = (curve[0], curve[curve.len() - 1]);
    let area: f64 = curve
        .windows(2)
        .map(|w| ((w[1].0 - w[0].0) / (x1 - x0)) * ((y0 - w[0].1) + (y0 - w[1].1)) / (2.0 * (y0 - y1)))
        .sum();
    assert!((area - auc).abs() < 1e-3, "the plotted curve has area {area}, the printed AUC is {auc}");
    assert!(curve.len() > 10, "{} points", curve.len());
    assert!(dom.contains("id=\"pr-evaluate\""), "no precision-recall curve");

    check_heat_map(&dom, "evaluate", &evaluate["report"]);
}

#[test]
fn the_diabetes_report_plots_its_sample_and_the_wine_report_its_confusion_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let record = run_demo("diabetes", &store);
    let page = store.join("_runs").join(record["run_id"].as_str().unwrap()).join("report.html");
    let dom = browse(&page, &dir.path().join("diabetes.png"), 3000);
    check_sections(&dom, &record);
    let evaluate = record["stages"].as_array().unwrap().iter().find(|s| s["name"] == "evaluate").unwrap();
    let sample = evaluate["report"]["sample"]["actual"].as_array().unwrap().len();
    assert_eq!(sample as u64, evaluate["report"]["rows"].as_u64().unwrap().min(500));
    for chart in ["predicted-evaluate", "residuals-evaluate"] {
        assert_eq!(element(&dom, "figure", chart).matches("<circle").count(), sample, "{chart}");
    }
    assert!((printed(&dom, "evaluate", "r2") - evaluate["report"]["r2"].as_f64().unwrap()).abs() < 1e-6);
    // Rows on the edges: the clean stage read what ingest wrote.
    let graph = element(&dom, "section", "graph");
    let ingest = record["stages"][0]["rows_out"].as_u64().unwrap();
    assert!(graph.contains(&format!(">{ingest}</text>")), "no edge says {ingest} rows");

    let record = run_demo("wine", &store);
    let page = store.join("_runs").join(record["run_id"].as_str().unwrap()).join("report.html");
    let dom = browse(&page, &dir.path().join("wine.png"), 3000);
    check_sections(&dom, &record);
    let evaluate = record["stages"].as_array().unwrap().iter().find(|s| s["name"] == "evaluate").unwrap();
    assert_eq!(evaluate["report"]["classes"].as_array().unwrap().len(), 3);
    check_heat_map(&dom, "evaluate", &evaluate["report"]);
    assert!(!dom.contains("id=\"roc-evaluate\""), "three classes have no ROC curve");
}

#[test]
fn a_failed_run_and_a_quarantine_have_their_report_and_wasmpipe_report_rewrites_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.csv"), "a,b\n1,2\n3,x\n5,6\n7,8\n").unwrap();
    let manifest = dir.path().join("wasmpipe.toml");
    let stage = |name: &str, component: &str, rest: &str| {
        format!(
            "[stage.{name}]\ncomponent = {:?}\n{rest}\n",
            repo().join("stages").join(component).display().to_string()
        )
    };
    std::fs::write(
        &manifest,
        format!(
            "version = 1\nname = \"t\"\n{}{}",
            stage("ingest", "passthrough", "inputs = [\"data.csv\"]\nschema = { a = \"int64\", b = \"int64\" }"),
            // (Fails on the data, which no check before the run can see.)
            stage(
                "fit",
                "validate",
                "inputs = [\"stage:ingest\"]\nconfig = { rules = [{ check = \"row_count\", min = 10, policy = \"fail\" }] }"
            ),
        ),
    )
    .unwrap();
    let store = dir.path().join("store");
    let out = wasmpipe().arg("run").arg(&manifest).arg("--store").arg(&store).output().unwrap();
    assert!(!out.status.success());
    let runs = std::fs::read_dir(store.join("_runs")).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    assert_eq!(runs.len(), 1);
    let page = runs[0].join("report.html");
    let dom = browse(&page, &dir.path().join("failed.png"), 1400);
    assert!(dom.contains("status failed"), "the page does not say the run failed");
    let error = element(&dom, "div", "error");
    assert!(error.contains("3 rows, expected at least 10"), "the error is not shown: {error}");
    let quarantine = element(&dom, "section", "quarantine");
    assert!(quarantine.contains("ingest") && quarantine.contains("<td class=\"n\">1</td>"), "{quarantine}");

    // `wasmpipe report` writes it again, or to a file of one's choice.
    std::fs::remove_file(&page).unwrap();
    let out = wasmpipe().args(["report", "--store"]).arg(&store).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(page.is_file());
    let elsewhere = dir.path().join("copy.html");
    let out = wasmpipe().args(["report", "--store"]).arg(&store).arg("--out").arg(&elsewhere).output().unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read(&elsewhere).unwrap(), std::fs::read(&page).unwrap());
    let out = wasmpipe().args(["report", "nope", "--store"]).arg(&store).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no run \"nope\""));
}
