//! The HTML run report: `<store>/_runs/<run id>/report.html`, one
//! self-contained page (inline SVG and CSS; no script, no network) drawn
//! from a run's record ([`RunRecord`]) and what its stages committed:
//!
//! - the pipeline as a graph of stages, rows on the edges;
//! - a timeline of every task, stage by stage;
//! - the stage table;
//! - validation results with their failing examples, and the quarantine
//!   counted by reason;
//! - metrics with their plots: ROC and precision-recall curves, the
//!   confusion matrix, predicted against actual and residuals, cluster
//!   sizes (each from what the stage published in its report);
//! - lineage: components, configurations, input commits, models.
//!
//! [`gather`] reads what the page needs beyond the record, [`render`]
//! draws it (a pure function), [`write`] does both and stores the page.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;
use wasmpipe_executor::{RunRecord, StageRecord};
use wasmpipe_storage::commit::CommitRecord;
use wasmpipe_storage::{Location, Storage, StorageError};

pub mod charts;
mod graph;

/// The page's file name, beside `run.json`.
pub const REPORT_FILE: &str = "report.html";

/// Most classes a confusion matrix is drawn for (a heat map of more is
/// neither legible nor small).
const MAX_HEAT_MAP_CLASSES: usize = 40;

/// Most quarantine reasons listed per stage.
const MAX_REASONS: usize = 20;

/// What a stage committed, read back for the report.
#[derive(Debug, Clone, Default)]
pub struct StageDetails {
    /// Its output's commit record (absent when it failed or the output
    /// has moved on since).
    pub commit: Option<CommitRecord>,
    /// Its quarantine: rows and the reasons, the most frequent first.
    pub quarantine: Option<(u64, Vec<(String, u64)>)>,
}

/// Where the report of run `run_id` is kept below the store `store`.
pub fn location(store: &Location, run_id: &str) -> Location {
    store.child(wasmpipe_executor::RUNS_DIR).child(run_id).child(REPORT_FILE)
}

/// What each stage of `run` committed, in the record's order. A commit
/// that another run has since replaced is left out (the page then shows
/// what the record alone says), so is one that cannot be read.
pub async fn gather(storage: &Storage, run: &RunRecord) -> Vec<StageDetails> {
    let mut out = Vec::with_capacity(run.stages.len());
    for stage in &run.stages {
        out.push(details(storage, run, stage).await.unwrap_or_default());
    }
    out
}

async fn details(storage: &Storage, run: &RunRecord, stage: &StageRecord) -> Result<StageDetails, StorageError> {
    if stage.status == "failed" {
        return Ok(StageDetails::default());
    }
    let at = storage.resolve(&stage.output)?;
    let Some((commit, _)) = wasmpipe_storage::commit::read_versioned(&at).await? else {
        return Ok(StageDetails::default());
    };
    let ours = stage.committed_by.as_deref().unwrap_or(&run.run_id);
    if commit.run_id != ours {
        return Ok(StageDetails::default());
    }
    let quarantine = if commit.quarantine.is_empty() {
        None
    } else {
        Some(wasmpipe_storage::quarantine::reasons(&at, &commit, MAX_REASONS).await?)
    };
    Ok(StageDetails { commit: Some(commit), quarantine })
}

/// Render `run`'s report and store it beside its record; returns where.
pub async fn write(storage: &Storage, store: &Location, run: &RunRecord) -> Result<Location, StorageError> {
    let details = gather(storage, run).await;
    let page = render(run, &details);
    let at = location(store, &run.run_id);
    at.put(bytes::Bytes::from(page.into_bytes())).await?;
    Ok(at)
}

const CSS: &str = include_str!("report.css");

/// `stages` with what each read, for the graph. Records written before
/// the record named its stages' inputs (format 1 without `inputs`) have
/// none: those are read from the stage's commit, whose inputs are
/// `URL[@IDENTITY][#OUTPUT]` (an upstream output's commit identity, and
/// which of its named outputs) or `model URL@IDENTITY` (a model, not an
/// edge of the graph); an input another stage of the run wrote is named as
/// that stage (`stage:NAME`, `stage:NAME.OUTPUT`).
fn with_inputs(stages: &[StageRecord], details: &[StageDetails]) -> Vec<StageRecord> {
    let trim = |url: &str| url.trim_end_matches('/').to_string();
    let mut filled = stages.to_vec();
    for (stage, d) in filled.iter_mut().zip(details) {
        let Some(commit) = d.commit.as_ref().filter(|_| stage.inputs.is_empty()) else { continue };
        stage.inputs = commit
            .inputs
            .iter()
            .filter(|input| !input.starts_with("model "))
            .map(|input| {
                let (read, output) = input.split_once('#').map_or((input.as_str(), None), |(r, o)| (r, Some(o)));
                let url = match read.rsplit_once('@') {
                    Some((url, id)) if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) => url,
                    _ => read,
                };
                match (stages.iter().find(|s| trim(&s.output) == trim(url)), output) {
                    (Some(upstream), None) => format!("stage:{}", upstream.name),
                    (Some(upstream), Some(output)) => format!("stage:{}.{output}", upstream.name),
                    (None, _) => input.clone(),
                }
            })
            .collect();
    }
    filled
}

/// The page of `run`, with `details[i]` what its `stages[i]` committed
/// (missing entries count as nothing read back).
pub fn render(run: &RunRecord, details: &[StageDetails]) -> String {
    let none = StageDetails::default();
    let stages: Vec<(&StageRecord, &StageDetails)> =
        run.stages.iter().enumerate().map(|(i, s)| (s, details.get(i).unwrap_or(&none))).collect();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "wasmpipe · " (run.pipeline) " · run " (run.run_id) }
                style { (PreEscaped(CSS)) }
            }
            body {
                (header(run))
                section #graph {
                    h2 { "Pipeline" }
                    p.note { "Stages left to right in the order data flows; each edge is labelled with the rows it carried." }
                    (PreEscaped(graph::svg(&with_inputs(&run.stages, details))))
                }
                section #timeline {
                    h2 { "Timeline" }
                    p.note { "Every task of the run, one bar each, stage by stage; tasks that ran at once stack in lanes." }
                    (timeline(run))
                }
                section #stages { h2 { "Stages" } (stage_table(run)) }
                (validation(&stages))
                (quarantine(&stages))
                (metrics(&stages))
                (lineage(&stages))
                (warnings(run))
                footer { "wasmpipe run report · run record format " (run.format) " · " (run.ended) }
            }
        }
    };
    page.into_string()
}

fn header(run: &RunRecord) -> Markup {
    let ok = run.status == "succeeded";
    html! {
        header {
            h1 { "Pipeline " span.name { (run.pipeline) } " " span class=(if ok { "status ok" } else { "status failed" }) { (run.status) } }
            dl.facts {
                dt { "run" } dd { code { (run.run_id) } }
                dt { "plan" } dd { code { (short(&run.plan_sha256)) } }
                dt { "engine" } dd { (run.engine) }
                dt { "store" } dd { code { (run.store) } }
                dt { "started" } dd { (run.started) }
                dt { "wall time" } dd { (seconds(run.seconds)) }
                dt { "stages" } dd { (run.stages.len()) }
            }
            @if let Some(e) = &run.error {
                div.error #error { strong { "The run failed: " } pre { (e) } }
            }
        }
    }
}

/// The first 12 hex digits of a SHA-256.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn seconds(s: f64) -> String {
    if s < 1.0 { format!("{:.0} ms", s * 1e3) } else { format!("{s:.2} s") }
}

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// A chart, or why it could not be drawn.
fn chart(id: &str, drawn: Result<String, String>) -> Markup {
    match drawn {
        Ok(svg) => html! { figure.chart id=(id) { (PreEscaped(svg)) } },
        Err(e) => html! { p.note { "(chart " (id) " could not be drawn: " (e) ")" } },
    }
}

/// The tasks of the run as lanes: each stage's tasks placed greedily in
/// the first lane free when they start.
fn timeline(run: &RunRecord) -> Markup {
    let start = run.stages.iter().flat_map(|s| &s.tasks).map(|t| t.started_ms).min();
    let Some(start) = start else {
        return html! { p.note { "No task ran." } };
    };
    let mut labels = Vec::new();
    let mut spans = Vec::new();
    let mut end = 0f64;
    for (series, stage) in run.stages.iter().enumerate() {
        let mut tasks: Vec<_> = stage.tasks.iter().collect();
        tasks.sort_by_key(|t| t.started_ms);
        let mut free_at: Vec<f64> = Vec::new();
        let first = labels.len();
        for t in tasks {
            let s = (t.started_ms - start) as f64 / 1e3;
            let e = s + t.seconds;
            end = end.max(e);
            // Start times are whole milliseconds: a task that starts
            // within 2 ms of another's end takes its lane.
            let lane = match free_at.iter().position(|&f| f <= s + 0.002) {
                Some(l) => l,
                None => {
                    free_at.push(0.0);
                    free_at.len() - 1
                }
            };
            free_at[lane] = e;
            spans.push(charts::Span { lane: first + lane, start: s, end: e, series });
        }
        for lane in 0..free_at.len() {
            labels.push(if lane == 0 { stage.name.clone() } else { String::new() });
        }
    }
    html! {
        (chart("timeline-chart", charts::timeline(&labels, &spans, end.max(run.seconds.min(end * 1.5)))))
        p.legend {
            @for (i, stage) in run.stages.iter().enumerate() {
                span.swatch style={ "background:" (charts::css_color(i)) } {} (stage.name) " "
            }
        }
    }
}

fn stage_table(run: &RunRecord) -> Markup {
    html! {
        table.data {
            thead { tr {
                th { "stage" } th { "kind" } th { "status" } th.n { "tasks" } th.n { "passes" }
                th.n { "rows in" } th.n { "rows out" } th.n { "quarantined" } th.n { "read" } th.n { "written" } th.n { "time" }
            } }
            tbody {
                @for s in &run.stages {
                    tr class=(s.status) {
                        td { a href={ "#stage-" (s.name) } { (s.name) } }
                        td { (s.kind) }
                        td { (s.status.replace('_', " ")) }
                        td.n { (s.tasks.len()) }
                        td.n { (s.passes) }
                        td.n { (count(s.rows_in)) }
                        td.n { (count(s.rows_out)) }
                        td.n { (count(s.rows_quarantined)) }
                        td.n { (bytes(s.bytes_read)) }
                        td.n { (bytes(s.bytes_written)) }
                        td.n { (seconds(s.seconds)) }
                    }
                }
            }
        }
    }
}

/// The report of a stage as JSON, when it published one.
fn report(stage: &StageRecord) -> Option<&Value> {
    stage.report.as_ref().filter(|r| r.is_object())
}

fn validation(stages: &[(&StageRecord, &StageDetails)]) -> Markup {
    let checked: Vec<_> = stages
        .iter()
        .filter_map(|(s, _)| report(s).and_then(|r| r.get("rules")?.as_array().map(|rules| (s, r, rules))))
        .collect();
    if checked.is_empty() {
        return html! {};
    }
    html! {
        section #validation {
            h2 { "Validation" }
            @for (stage, report, rules) in checked {
                h3 { (stage.name) " · " (count(report["rows"].as_u64().unwrap_or(0))) " rows · "
                    @if report["passed"].as_bool() == Some(true) { span.status.ok { "every rule passed" } }
                    @else { span.status.failed { "rules failed" } } }
                table.data {
                    thead { tr { th { "rule" } th { "policy" } th.n { "rows checked" } th.n { "rows failed" } th { "result" } th { "failing examples" } } }
                    tbody {
                        @for rule in rules {
                            @let passed = rule["passed"].as_bool() == Some(true);
                            tr class=(if passed { "passed" } else { "failed" }) {
                                td { code { (rule["name"].as_str().unwrap_or("?")) } }
                                td { (rule["policy"].as_str().unwrap_or("")) }
                                td.n { (count(rule["rows_checked"].as_u64().unwrap_or(0))) }
                                td.n { (count(rule["rows_failed"].as_u64().unwrap_or(0))) }
                                td { (if passed { "passed" } else { "failed" }) }
                                td.examples {
                                    @for e in rule["examples"].as_array().into_iter().flatten() {
                                        code { (e.as_str().map_or_else(|| e.to_string(), str::to_string)) } " "
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn quarantine(stages: &[(&StageRecord, &StageDetails)]) -> Markup {
    let held: Vec<_> = stages.iter().filter(|(s, _)| s.rows_quarantined > 0).collect();
    if held.is_empty() {
        return html! {};
    }
    html! {
        section #quarantine {
            h2 { "Quarantine" }
            @for (stage, details) in held {
                h3 { (stage.name) " · " (count(stage.rows_quarantined)) " rows set aside in " code { (stage.output) "/_quarantine" } }
                @if let Some((_, reasons)) = &details.quarantine {
                    table.data {
                        thead { tr { th.n { "rows" } th { "reason" } } }
                        tbody { @for (reason, n) in reasons { tr { td.n { (count(*n)) } td { (reason) } } } }
                    }
                } @else {
                    p.note { "The reasons could not be read back (the output has been replaced since)." }
                }
            }
        }
    }
}

/// The f64s of a JSON array.
fn floats(v: &Value) -> Vec<f64> {
    v.as_array().into_iter().flatten().filter_map(Value::as_f64).collect()
}

fn metrics(stages: &[(&StageRecord, &StageDetails)]) -> Markup {
    // Validation reports (their `rules`) have their own section.
    let reported: Vec<_> =
        stages.iter().filter_map(|(s, _)| report(s).filter(|r| r.get("rules").is_none()).map(|r| (*s, r))).collect();
    if reported.is_empty() {
        return html! {};
    }
    html! {
        section #metrics {
            h2 { "Metrics" }
            @for (stage, r) in reported {
                div.stage-metrics id={ "metrics-" (stage.name) } {
                    h3 { (stage.name) }
                    div.metrics-row {
                        (scalars(r))
                        div.charts { (plots(&stage.name, r)) }
                    }
                    details { summary { "the report as published" } pre { (serde_json::to_string_pretty(r).unwrap_or_default()) } }
                }
            }
        }
    }
}

/// The report's top-level numbers as a table, each with a `data-metric`.
fn scalars(r: &Value) -> Markup {
    let mut rows: Vec<(String, f64)> = Vec::new();
    if let Some(map) = r.as_object() {
        for (k, v) in map {
            if let Some(x) = v.as_f64() {
                rows.push((k.clone(), x));
            } else if let Some(avg) = v.as_object() {
                for (k2, v2) in avg {
                    if let Some(x) = v2.as_f64() {
                        rows.push((format!("{k} {k2}"), x));
                    }
                }
            }
        }
    }
    html! {
        table.metrics {
            tbody {
                @for (k, v) in &rows {
                    tr { th { (k) } td.n data-metric=(k) { (number(*v)) } }
                }
            }
        }
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let digits = count(v.abs() as u64);
        if v < 0.0 { format!("-{digits}") } else { digits }
    } else {
        format!("{v:.6}")
    }
}

fn plots(stage: &str, r: &Value) -> Markup {
    let mut out = Vec::new();
    if let Some(curve) = r.get("curve") {
        let (fpr, tpr, precision) = (floats(&curve["fpr"]), floats(&curve["tpr"]), floats(&curve["precision"]));
        let auc = r["roc_auc"].as_f64().map_or(String::new(), |a| format!(" (AUC {a:.4})"));
        let roc: Vec<(f64, f64)> = fpr.iter().copied().zip(tpr.iter().copied()).collect();
        out.push(chart(
            &format!("roc-{stage}"),
            charts::unit_curve(
                &format!("ROC curve{auc}"),
                ("false positive rate", "true positive rate"),
                &roc,
                ((0.0, 0.0), (1.0, 1.0)),
            ),
        ));
        let ap = r["average_precision"].as_f64().map_or(String::new(), |a| format!(" (AP {a:.4})"));
        let pr: Vec<(f64, f64)> = tpr.iter().copied().zip(precision.iter().copied()).collect();
        let base = positives_share(r).unwrap_or(0.5);
        out.push(chart(
            &format!("pr-{stage}"),
            charts::unit_curve(
                &format!("precision-recall{ap}"),
                ("recall", "precision"),
                &pr,
                ((0.0, base), (1.0, base)),
            ),
        ));
    }
    if let (Some(classes), Some(_)) = (r["classes"].as_array(), r["confusion_matrix"].as_array())
        && classes.len() > MAX_HEAT_MAP_CLASSES
    {
        out.push(html! { p.note { "The confusion matrix of " (classes.len()) " classes is too large to draw: it is in the report as published." } });
    } else if let (Some(classes), Some(matrix)) = (r["classes"].as_array(), r["confusion_matrix"].as_array()) {
        let classes: Vec<String> =
            classes.iter().map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string)).collect();
        let matrix: Vec<Vec<u64>> =
            matrix.iter().map(|row| row.as_array().into_iter().flatten().filter_map(Value::as_u64).collect()).collect();
        out.push(chart(&format!("confusion-{stage}"), charts::confusion(&classes, &matrix)));
    }
    if let Some(sample) = r.get("sample") {
        // JSON has no NaN: a null stays in its place, so pairs stay pairs.
        let values = |v: &Value| -> Vec<f64> {
            v.as_array().into_iter().flatten().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()
        };
        let pairs: Vec<(f64, f64)> = values(&sample["actual"])
            .into_iter()
            .zip(values(&sample["predicted"]))
            .filter(|(a, p)| a.is_finite() && p.is_finite())
            .collect();
        if !pairs.is_empty() {
            let n = pairs.len();
            out.push(chart(
                &format!("predicted-{stage}"),
                charts::scatter(&format!("predicted against actual ({n} rows)"), ("actual", "predicted"), &pairs, 1.0),
            ));
            let residuals: Vec<(f64, f64)> = pairs.iter().map(|&(a, p)| (p, a - p)).collect();
            out.push(chart(
                &format!("residuals-{stage}"),
                charts::scatter("residuals", ("predicted", "actual - predicted"), &residuals, 0.0),
            ));
        }
    }
    if let Some(sizes) = r["sizes"].as_array() {
        let sizes: Vec<u64> = sizes.iter().filter_map(Value::as_u64).collect();
        out.push(chart(&format!("sizes-{stage}"), charts::bars("cluster sizes", ("cluster", "rows"), &sizes)));
    }
    html! { @for c in out { (c) } }
}

/// The share of positive rows, the precision of a classifier that says
/// positive every time (the precision-recall curve's baseline).
fn positives_share(r: &Value) -> Option<f64> {
    let support = floats(&r["support"]);
    let total: f64 = support.iter().sum();
    (support.len() == 2 && total > 0.0).then(|| support[1] / total)
}

fn lineage(stages: &[(&StageRecord, &StageDetails)]) -> Markup {
    html! {
        section #lineage {
            h2 { "Lineage" }
            table.data.lineage {
                thead { tr { th { "stage" } th { "component" } th { "config" } th { "inputs (commit identity)" } th { "model" } } }
                tbody {
                    @for (s, d) in stages {
                        tr id={ "stage-" (s.name) } {
                            td { (s.name) }
                            td { code title=(s.component) { (short(&s.component)) } }
                            td {
                                code title=(s.config_sha256) { (short(&s.config_sha256)) }
                                @for (key, columns) in &s.selected {
                                    div.selected title=(columns.join(", ")) { (key) ": " (columns.len()) " columns selected" }
                                }
                            }
                            td {
                                @match &d.commit {
                                    Some(c) => { @for i in &c.inputs { div { code { (i) } } } }
                                    None => { @for i in &s.inputs { div { code { (i) } } } }
                                }
                            }
                            td {
                                @if let Some(m) = &s.model { "fitted " code title=(m) { (short(m)) } }
                                @if let Some(m) = &s.applied_model { "applied " code title=(m) { (short(m)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn warnings(run: &RunRecord) -> Markup {
    if run.warnings.is_empty() {
        return html! {};
    }
    html! {
        section #warnings {
            h2 { "Warnings" }
            ul.log { @for w in &run.warnings { li class=(w.level) { span.level { (w.level) } " " code { (w.label) } " " (w.message) } } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, inputs: &[&str], report: Option<Value>) -> StageRecord {
        serde_json::from_value(serde_json::json!({
            "name": name, "kind": "estimator", "status": "ran", "component": "c0ffee", "config_sha256": "beef",
            "inputs": inputs, "passes": 1, "rows_in": 10, "rows_out": 10, "rows_quarantined": 0, "bytes_read": 1,
            "bytes_written": 1, "seconds": 0.5, "output": format!("file:///s/{name}"), "report": report,
            "tasks": [{"task": "fit:0", "pass": 0, "started_ms": 1000, "seconds": 0.25, "rows_in": 10, "rows_out": 0,
                       "rows_quarantined": 0, "bytes_read": 1, "bytes_written": 0, "outcome": "done"}]
        }))
        .unwrap()
    }

    fn run(stages: Vec<StageRecord>, error: Option<&str>) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "format": 1, "run_id": "r1", "pipeline": "p", "plan_sha256": "abc", "engine": "local", "store": "/s",
            "started": "2026-12-02T00:00:00Z", "ended": "2026-12-02T00:00:01Z", "seconds": 1.0,
            "status": if error.is_some() { "failed" } else { "succeeded" }, "stages": stages, "warnings": [],
            "error": error,
        }))
        .unwrap()
    }

    #[test]
    fn cluster_sizes_are_bars_and_inputs_are_boxes() {
        let kmeans = stage(
            "cluster",
            &["file:///data/x.parquet"],
            Some(serde_json::json!({"sizes": [5, 3, 2], "inertia": 1.5})),
        );
        let page = render(&run(vec![kmeans], None), &[]);
        let sizes = &page[page.find("id=\"sizes-cluster\"").unwrap()..];
        let sizes = &sizes[..sizes.find("</figure>").unwrap()];
        assert_eq!(sizes.matches("<rect").count(), 1 + 3, "the background and three bars");
        assert!(page.contains("data-stage=\"x.parquet\"") && page.contains("data-stage=\"cluster\""), "{page}");
        assert!(page.contains("data-metric=\"inertia\">1.500000<"), "{page}");
    }

    #[test]
    fn values_past_f64_and_huge_matrices_are_not_drawn_and_do_not_hang() {
        let sample = serde_json::json!({"actual": [1.5e308, -1.5e308, null], "predicted": [-1.5e308, 1.5e308, 1.0]});
        let classes: Vec<u32> = (0..100).collect();
        let matrix = vec![vec![1u64; 100]; 100];
        let report = serde_json::json!({"r2": 0.5, "sample": sample, "classes": classes, "confusion_matrix": matrix});
        let page = render(&run(vec![stage("evaluate", &["stage:x"], Some(report))], None), &[]);
        assert!(page.contains("chart predicted-evaluate could not be drawn"), "{page}");
        assert!(page.contains("The confusion matrix of 100 classes is too large to draw"), "{page}");
        assert!(page.len() < 200_000, "{} bytes", page.len());
    }

    #[test]
    fn a_record_that_names_no_inputs_takes_them_from_the_commits() {
        let (ingest, fit) = (stage("ingest", &[], None), stage("fit", &[], None));
        let commit = |inputs: &[&str]| -> StageDetails {
            let commit = serde_json::json!({
                "format": "1", "pipeline": "p", "stage": "s", "run_id": "r1", "component": "c", "config": "c",
                "inputs": inputs, "parts": [], "model": null, "rows": 10, "committed_at": 0,
            });
            StageDetails { commit: Some(serde_json::from_value(commit).unwrap()), quarantine: None }
        };
        let id = "ab".repeat(32);
        let (rows, model) = (format!("file:///s/ingest/@{id}#train"), format!("model file:///s/fit@{id}"));
        let details = [commit(&["file:///data/x.csv"]), commit(&[&rows, &model])];
        let page = render(&run(vec![ingest, fit], None), &details);
        let graph = &page[page.find("<svg class=\"graph\"").unwrap()..];
        let graph = &graph[..graph.find("</svg>").unwrap()];
        assert!(graph.contains("data-stage=\"x.csv\""), "the file read is a box: {graph}");
        assert_eq!(graph.matches("class=\"edge\"").count(), 2, "x.csv to ingest, ingest to fit: {graph}");
        assert!(graph.contains(">train<"), "the edge names the output it carries: {graph}");
    }

    #[test]
    fn a_run_that_failed_before_any_task_still_renders() {
        let mut failed = stage("fit", &["stage:missing"], None);
        failed.component = "é".repeat(20);
        failed.status = "failed".into();
        failed.tasks.clear();
        let page = render(&run(vec![failed], Some("stage \"fit\" failed: <boom>")), &[]);
        assert!(page.contains("No task ran."), "{page}");
        assert!(page.contains("stage &quot;fit&quot; failed: &lt;boom&gt;"), "the error is escaped: {page}");
    }
}
