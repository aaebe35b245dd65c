//! The report's plots, drawn with plotters as SVG text (the browser renders the labels, so no font files are
//! needed): training curves against the optimisation step, and a bar chart of per-dimension KL.

use plotters::coord::Shift;
use plotters::prelude::*;

/// Size of a plot in pixels: three fit side by side on the page.
const SIZE: (u32, u32) = (440, 330);
/// Colour of the grid lines.
const GRID: RGBColor = RGBColor(225, 225, 225);
/// Share of the first step values left out when choosing the y range, so the first steps' large losses do not
/// flatten the rest of the curve (values outside the range are drawn at its edge).
const SKIPPED_START: f64 = 0.1;

/// One curve of a line chart (the legend is the page's, shared by all the charts).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// (step, value) points.
    pub points: Vec<(f64, f64)>,
    /// The line colour.
    pub colour: RGBColor,
    /// Per-epoch figures: a thicker line with a marker at each point. Otherwise a thin line (per-step figures).
    pub per_epoch: bool,
}

/// One bar of a bar chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Its height.
    pub value: f64,
    /// Its colour.
    pub colour: RGBColor,
}

/// A line chart of `series` against the optimisation step, as an SVG document.
pub fn line_chart(title: &str, y_label: &str, series: &[Series]) -> std::io::Result<String> {
    xy_chart(title, (&XAxis { label: "step", decimals: 0 }, y_label), series)
}

/// What the x axis of a chart shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct XAxis<'a> {
    /// Its label.
    pub label: &'a str,
    /// Decimals of its tick labels.
    pub decimals: usize,
}

/// A line chart of `series` against the x axis `axes.0`, as an SVG document.
pub fn xy_chart(title: &str, (x_axis, y_label): (&XAxis, &str), series: &[Series]) -> std::io::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw_lines(&root, title, (x_axis, y_label), series).map_err(std::io::Error::other)?;
    }
    Ok(svg)
}

/// A bar chart with one bar per latent dimension (0, 1, ...), as an SVG document.
pub fn bar_chart(title: &str, y_label: &str, bars: &[Bar]) -> std::io::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw_bars(&root, title, y_label, bars).map_err(std::io::Error::other)?;
    }
    Ok(svg)
}

type DrawResult = Result<(), String>;

fn draw_lines(
    root: &DrawingArea<SVGBackend, Shift>,
    title: &str,
    (x_axis, y_label): (&XAxis, &str),
    series: &[Series],
) -> DrawResult {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (x_range, y_range) = (x_bounds(series), y_bounds(series));
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range.clone())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .x_label_formatter(&|x| format!("{x:.*}", x_axis.decimals))
        .x_desc(x_axis.label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    for curve in series.iter().filter(|s| !s.points.is_empty()) {
        let style =
            ShapeStyle { color: curve.colour.to_rgba(), filled: false, stroke_width: 1 + u32::from(curve.per_epoch) };
        let points: Vec<(f64, f64)> =
            curve.points.iter().map(|&(x, y)| (x, y.clamp(y_range.start, y_range.end))).collect();
        chart.draw_series(LineSeries::new(points.clone(), style)).map_err(|e| e.to_string())?;
        if curve.per_epoch {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled()))).map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

fn draw_bars(root: &DrawingArea<SVGBackend, Shift>, title: &str, y_label: &str, bars: &[Bar]) -> DrawResult {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let top = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-3) * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5..bars.len().max(1) as f64 - 0.5, 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .x_labels(bars.len().clamp(1, 20))
        .x_label_formatter(&|x| format!("{:.0}", x))
        .x_desc("latent dimension")
        .y_desc(y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    let rectangles = bars.iter().enumerate().map(|(i, bar)| {
        Rectangle::new([(i as f64 - 0.4, 0.0), (i as f64 + 0.4, bar.value.max(0.0))], bar.colour.filled())
    });
    chart.draw_series(rectangles).map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// The steps covered by all series (at least a unit range).
fn x_bounds(series: &[Series]) -> std::ops::Range<f64> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    padded(xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x))), 0.0)
}

/// The values to show: all per-epoch values and the per-step values after the first [`SKIPPED_START`] of steps.
fn y_bounds(series: &[Series]) -> std::ops::Range<f64> {
    let mut range = (f64::INFINITY, f64::NEG_INFINITY);
    for curve in series {
        let skip = if curve.per_epoch { 0 } else { (curve.points.len() as f64 * SKIPPED_START) as usize };
        for &(_, y) in curve.points.iter().skip(skip).filter(|p| p.1.is_finite()) {
            range = (range.0.min(y), range.1.max(y));
        }
    }
    padded(range, 0.05)
}

/// `(low, high)` widened by `margin` of its span on each side; an empty or single-value range becomes a unit range.
fn padded((low, high): (f64, f64), margin: f64) -> std::ops::Range<f64> {
    if !(low.is_finite() && high.is_finite()) {
        return 0.0..1.0;
    }
    if high - low < 1e-9 {
        return low - 0.5..high + 0.5;
    }
    let pad = (high - low) * margin;
    low - pad..high + pad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: Vec<(f64, f64)>, per_epoch: bool) -> Series {
        Series { points, colour: BLUE, per_epoch }
    }

    #[test]
    fn a_line_chart_is_svg_with_its_title_and_labels() {
        let steps: Vec<(f64, f64)> = (1..=50).map(|s| (s as f64, 100.0 / s as f64)).collect();
        let svg =
            line_chart("Reconstruction", "nats", &[series(steps, false), series(vec![(25.0, 4.0), (50.0, 2.0)], true)])
                .unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in ["Reconstruction", "nats", "\nstep\n", "\n50\n", "<polyline", "<circle"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn the_y_range_skips_the_first_steps_but_keeps_epochs() {
        let mut steps: Vec<(f64, f64)> = (0..100).map(|s| (s as f64, 10.0)).collect();
        steps[0].1 = 1000.0;
        let range = y_bounds(&[series(steps.clone(), false)]);
        assert!(range.end < 11.0, "{range:?}");
        steps[0].1 = 10.0;
        let range = y_bounds(&[series(steps, false), series(vec![(1.0, 20.0)], true)]);
        assert!(range.end >= 20.0, "{range:?}");
        assert_eq!(y_bounds(&[]), 0.0..1.0);
    }

    #[test]
    fn a_bar_chart_draws_one_rectangle_per_bar() {
        let bars =
            vec![Bar { value: 2.0, colour: BLUE }, Bar { value: 0.0, colour: RED }, Bar { value: 0.5, colour: BLUE }];
        let svg = bar_chart("KL per dimension", "nats", &bars).unwrap();
        assert!(svg.contains("KL per dimension") && svg.contains("latent dimension"));
        assert!(svg.matches("<rect").count() >= 3, "{svg}");
    }
}
