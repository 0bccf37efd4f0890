//! The report's charts, drawn with plotters as SVG.
//!
//! Every chart is drawn at [`SCALE`] times the size it is shown at (the
//! page's CSS shrinks it), so that plotters' whole-pixel coordinates are
//! finer than the eye and than the checks on plotted values (the area
//! under a ROC curve read back from its points is within 1e-4 of the one
//! the points were drawn from).

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordi32};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// How much finer than shown charts are drawn.
pub const SCALE: u32 = 2;

/// The series colours, in order (colour-blind safe: Okabe and Ito).
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

/// The `i`th series colour.
pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// The same colour as CSS.
pub fn css_color(i: usize) -> String {
    let RGBColor(r, g, b) = color(i);
    format!("#{r:02x}{g:02x}{b:02x}")
}

const GRID: RGBColor = RGBColor(225, 225, 225);
const FINE_GRID: RGBColor = RGBColor(244, 244, 244);
const REFERENCE: RGBColor = RGBColor(150, 150, 150);

fn px(v: u32) -> u32 {
    v * SCALE
}

fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from(("sans-serif", px(size)).into_font())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draw on a `width` x `height` (as shown) SVG and return it.
fn svg(width: u32, height: u32, draw: impl FnOnce(&Area) -> Result<(), String>) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (px(width), px(height))).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A builder with the report's margins and fonts.
fn builder<'a, 'b>(root: &'a Area<'b>, caption: &str) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(root);
    b.caption(caption, ("sans-serif", px(17))).margin(px(10)).x_label_area_size(px(42)).y_label_area_size(px(58));
    b
}

/// `n` categories, `0..n` (plotters' integer ranges include their end).
fn segments(n: i32) -> SegmentedCoord<RangedCoordi32> {
    (0..(n - 1).max(0)).into_segmented()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A chart of numbers against numbers.
type XyChart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The grid, ticks and axis names of an [`XyChart`].
fn xy_mesh(chart: &mut XyChart, axes: (&str, &str)) -> Result<(), String> {
    chart
        .configure_mesh()
        .light_line_style(FINE_GRID)
        .bold_line_style(GRID)
        .x_desc(axes.0)
        .y_desc(axes.1)
        .label_style(font(14))
        .axis_desc_style(font(15))
        .draw()
        .map_err(err)
}

/// A line chart of `points` over [0, 1] x [0, 1] with a dashed reference
/// from `reference.0` to `reference.1`: the ROC and precision-recall
/// curves.
pub fn unit_curve(
    caption: &str,
    axes: (&str, &str),
    points: &[(f64, f64)],
    reference: ((f64, f64), (f64, f64)),
) -> Result<String, String> {
    svg(400, 380, |root| {
        let mut chart = builder(root, caption).build_cartesian_2d(0f64..1f64, 0f64..1f64).map_err(err)?;
        xy_mesh(&mut chart, axes)?;
        let (a, b) = reference;
        chart.draw_series(DashedLineSeries::new([a, b], px(6), px(5), REFERENCE.stroke_width(px(1)))).map_err(err)?;
        chart.draw_series(LineSeries::new(points.iter().copied(), color(0).stroke_width(px(2)))).map_err(err)?;
        Ok(())
    })
}

/// A scatter of `points` with the line `y = slope * x`'s reference over
/// their range (`slope` 1: predicted against actual; 0: residuals).
pub fn scatter(caption: &str, axes: (&str, &str), points: &[(f64, f64)], slope: f64) -> Result<String, String> {
    // Ranges from the data must be finite (plotters does not return from
    // an infinite one): points that are not, or whose span overflows, are
    // not drawn.
    let points: Vec<(f64, f64)> = points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let range = |v: &mut dyn Iterator<Item = f64>| -> Result<std::ops::Range<f64>, String> {
        let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| (l.min(x), h.max(x)));
        let pad = ((hi - lo) * 0.05).max(1e-9);
        let r = (lo - pad)..(hi + pad);
        if r.start.is_finite() && r.end.is_finite() && (r.end - r.start).is_finite() {
            Ok(r)
        } else {
            Err(format!("no finite range for {} points", points.len()))
        }
    };
    let ys = if slope == 0.0 {
        let m = points.iter().map(|p| p.1.abs()).fold(0.0, f64::max).max(1e-9) * 1.05;
        range(&mut [-m, m].into_iter())?
    } else {
        range(&mut points.iter().flat_map(|p| [p.0, p.1]))?
    };
    let xs = if slope == 0.0 { range(&mut points.iter().map(|p| p.0))? } else { ys.clone() };
    let points = &points[..];
    svg(400, 380, |root| {
        let mut chart = builder(root, caption).build_cartesian_2d(xs.clone(), ys).map_err(err)?;
        xy_mesh(&mut chart, axes)?;
        let line = [(xs.start, slope * xs.start), (xs.end, slope * xs.end)];
        chart.draw_series(DashedLineSeries::new(line, px(6), px(5), REFERENCE.stroke_width(px(1)))).map_err(err)?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, px(3), color(0).mix(0.55).filled()))).map_err(err)?;
        Ok(())
    })
}

/// A heat map of a confusion matrix: rows the true classes (top to
/// bottom), columns the predicted ones, each cell shaded by its share of
/// its row and labelled with its count.
pub fn confusion(classes: &[String], matrix: &[Vec<u64>]) -> Result<String, String> {
    let k = classes.len() as i32;
    let side = (120 + 36 * k as u32).clamp(300, 560);
    svg(side, side, |root| {
        let mut chart = builder(root, "confusion matrix").build_cartesian_2d(segments(k), segments(k)).map_err(err)?;
        let label = |v: &SegmentValue<i32>, flip: bool| match v {
            SegmentValue::CenterOf(i) => {
                let i = if flip { k - 1 - i } else { *i };
                classes.get(i as usize).cloned().unwrap_or_default()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(k as usize)
            .y_labels(k as usize)
            .x_label_formatter(&|v| label(v, false))
            .y_label_formatter(&|v| label(v, true))
            .x_desc("predicted")
            .y_desc("true")
            .label_style(font(14))
            .axis_desc_style(font(15))
            .draw()
            .map_err(err)?;
        let mut cells = Vec::new();
        for (i, row) in matrix.iter().enumerate() {
            let total = row.iter().sum::<u64>().max(1) as f64;
            for (j, &n) in row.iter().enumerate() {
                let share = n as f64 / total;
                let y = k - 1 - i as i32;
                cells.push((j as i32, y, n, share));
            }
        }
        chart
            .draw_series(cells.iter().map(|&(x, y, _, share)| {
                let shade = |c: u8| (255.0 - (255.0 - c as f64) * share).round() as u8;
                let RGBColor(r, g, b) = color(0);
                Rectangle::new(
                    [
                        (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                    ],
                    RGBColor(shade(r), shade(g), shade(b)).filled(),
                )
            }))
            .map_err(err)?;
        chart
            .draw_series(cells.iter().map(|&(x, y, n, share)| {
                let ink: &'static RGBColor = if share > 0.55 { &WHITE } else { &BLACK };
                let style = font(13).color(ink).pos(Pos::new(HPos::Center, VPos::Center));
                Text::new(n.to_string(), (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)), style)
            }))
            .map_err(err)?;
        Ok(())
    })
}

/// Bars of `values` labelled by their index: k-means cluster sizes.
pub fn bars(caption: &str, axes: (&str, &str), values: &[u64]) -> Result<String, String> {
    let n = values.len() as i32;
    let top = values.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1;
    svg((140 + 28 * n as u32).clamp(320, 720), 320, |root| {
        let mut chart = builder(root, caption).build_cartesian_2d(segments(n), 0f64..top).map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(FINE_GRID)
            .bold_line_style(GRID)
            .x_labels(n as usize)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => i.to_string(),
                _ => String::new(),
            })
            .x_desc(axes.0)
            .y_desc(axes.1)
            .label_style(font(14))
            .axis_desc_style(font(15))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let i = i as i32;
                let mut bar = Rectangle::new(
                    [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v as f64)],
                    color(0).filled(),
                );
                bar.set_margin(0, 0, px(3), px(3));
                bar
            }))
            .map_err(err)?;
        Ok(())
    })
}

/// One bar of a [`timeline`]: its lane, start and end (seconds since the
/// run started) and its series (the stage's index).
pub struct Span {
    /// The lane, from the top.
    pub lane: usize,
    /// Seconds since the run started.
    pub start: f64,
    /// Seconds since the run started.
    pub end: f64,
    /// The stage's index, for its colour.
    pub series: usize,
}

/// A Gantt chart: `spans` in `labels.len()` lanes (labelled, top to
/// bottom) over `seconds`.
pub fn timeline(labels: &[String], spans: &[Span], seconds: f64) -> Result<String, String> {
    let lanes = labels.len().max(1) as i32;
    let height = (90 + 18 * lanes as u32).min(1600);
    svg(900, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(px(10))
            .x_label_area_size(px(38))
            .y_label_area_size(px(150))
            .build_cartesian_2d(0f64..seconds.max(1e-3) * 1.02, segments(lanes))
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(FINE_GRID)
            .bold_line_style(GRID)
            .y_labels(lanes as usize)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get((lanes - 1 - i) as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("seconds since the run started")
            .label_style(font(11))
            .axis_desc_style(font(12))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(spans.iter().map(|s| {
                let y = lanes - 1 - s.lane as i32;
                let mut bar = Rectangle::new(
                    [
                        (s.start, SegmentValue::Exact(y)),
                        (s.end.max(s.start + seconds * 1e-3), SegmentValue::Exact(y + 1)),
                    ],
                    color(s.series).filled(),
                );
                bar.set_margin(px(2), px(2), 0, 0);
                bar
            }))
            .map_err(err)?;
        Ok(())
    })
}
