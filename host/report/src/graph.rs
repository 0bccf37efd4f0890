//! The pipeline as a graph: stages (and the locations they read) as boxes
//! in columns by depth, edges labelled with the rows they carried.

use maud::{Markup, html};
use wasmpipe_executor::StageRecord;

const BOX_W: f64 = 160.0;
const BOX_H: f64 = 46.0;
const COLUMN: f64 = 230.0;
const ROW: f64 = 68.0;
const PAD: f64 = 16.0;

/// One box of the graph.
struct Node {
    label: String,
    detail: String,
    column: usize,
    row: usize,
    /// The stage's index, for its colour; `None` for a location read.
    series: Option<usize>,
}

/// The next free row of `column`.
fn place(column: usize, rows_in_column: &mut Vec<usize>) -> usize {
    if rows_in_column.len() <= column {
        rows_in_column.resize(column + 1, 0);
    }
    rows_in_column[column] += 1;
    rows_in_column[column] - 1
}

/// The graph of `stages` as an SVG element.
pub fn svg(stages: &[StageRecord]) -> String {
    let mut nodes: Vec<Node> = Vec::new();
    // (from node, to node, rows)
    // (from node, to node, rows, the named output it reads)
    let mut edges: Vec<(usize, usize, Option<u64>, Option<String>)> = Vec::new();
    let mut stage_node: Vec<usize> = Vec::new();
    let mut rows_in_column: Vec<usize> = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        let mut from: Vec<(usize, Option<u64>, Option<String>)> = Vec::new();
        let single = stage.inputs.len() == 1;
        for input in &stage.inputs {
            // `stage:NAME`, or `stage:NAME.OUTPUT` (one of its named outputs:
            // some of its rows).
            let upstream = input
                .strip_prefix("stage:")
                .map(|name| name.split_once('.').map_or((name, None), |(n, o)| (n, Some(o))));
            let upstream =
                upstream.and_then(|(name, output)| Some((stages[..i].iter().position(|s| s.name == name)?, output)));
            match upstream {
                Some((u, None)) => from.push((stage_node[u], Some(stages[u].rows_out), None)),
                Some((u, Some(output))) => {
                    let rows = stages[u].outputs.get(output).copied().or(single.then_some(stage.rows_in));
                    from.push((stage_node[u], rows, Some(output.to_string())));
                }
                None => {
                    let name = input.trim_end_matches('/').rsplit('/').next().unwrap_or(input).to_string();
                    let row = place(0, &mut rows_in_column);
                    nodes.push(Node { label: name, detail: "input".into(), column: 0, row, series: None });
                    from.push((nodes.len() - 1, single.then_some(stage.rows_in), None));
                }
            }
        }
        let column = from.iter().map(|(n, ..)| nodes[*n].column + 1).max().unwrap_or(0);
        let row = place(column, &mut rows_in_column);
        let detail = match (stage.status.as_str(), stage.kind.as_str()) {
            ("failed", kind) => format!("{kind} · failed"),
            // An aggregator commits a result, not rows.
            (_, "aggregator") => "aggregator · result".to_string(),
            (_, kind) => format!("{kind} · {} rows", super::count(stage.rows_out)),
        };
        nodes.push(Node { label: stage.name.clone(), detail, column, row, series: Some(i) });
        let me = nodes.len() - 1;
        stage_node.push(me);
        edges.extend(from.into_iter().map(|(n, rows, output)| (n, me, rows, output)));
    }
    let columns = rows_in_column.len().max(1);
    let rows = rows_in_column.iter().copied().max().unwrap_or(1);
    let width = PAD * 2.0 + (columns - 1) as f64 * COLUMN + BOX_W;
    let height = PAD * 2.0 + (rows - 1) as f64 * ROW + BOX_H;
    let at = |n: &Node| (PAD + n.column as f64 * COLUMN, PAD + n.row as f64 * ROW);
    let markup: Markup = html! {
        svg.graph xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#777" {}
                }
            }
            @for (a, b, rows, output) in &edges {
                @let (a, b, rows) = (*a, *b, *rows);
                @let ((ax, ay), (bx, by)) = (at(&nodes[a]), at(&nodes[b]));
                @let (x1, y1, x2, y2) = (ax + BOX_W, ay + BOX_H / 2.0, bx, by + BOX_H / 2.0);
                @let mid = (x1 + x2) / 2.0;
                g.edge {
                    path d={ "M " (x1) " " (y1) " C " (mid) " " (y1) ", " (mid) " " (y2) ", " (x2) " " (y2) }
                        fill="none" stroke="#777" stroke-width="1.4" marker-end="url(#arrow)" {}
                    @match (output, rows) {
                        // A named output's edge says which: `train 456`.
                        (Some(output), rows) => {
                            text x=(mid) y={ ((y1 + y2) / 2.0 - 5.0) } text-anchor="middle" class="edge-rows" {
                                tspan.edge-output { (output) }
                                @if let Some(rows) = rows { " " (super::count(rows)) }
                            }
                        }
                        (None, Some(rows)) => {
                            text x=(mid) y={ ((y1 + y2) / 2.0 - 5.0) } text-anchor="middle" class="edge-rows" { (super::count(rows)) }
                        }
                        (None, None) => {}
                    }
                }
            }
            @for n in &nodes {
                @let (x, y) = at(n);
                @let color = n.series.map_or("#bbbbbb".to_string(), super::charts::css_color);
                g.node data-stage=(n.label) {
                    rect x=(x) y=(y) width=(BOX_W) height=(BOX_H) rx="6" fill="#fff" stroke=(color) stroke-width="2" {}
                    rect x=(x) y=(y) width="6" height=(BOX_H) rx="3" fill=(color) {}
                    text x={ (x + 14.0) } y={ (y + 19.0) } class="node-name" { (n.label) }
                    text x={ (x + 14.0) } y={ (y + 36.0) } class="node-detail" { (n.detail) }
                }
            }
        }
    };
    markup.into_string()
}
