//! The per-iteration chart: pass@1 and Beyond-T/M/I (percent) against the iteration, as PNG and
//! SVG.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (`assets/DejaVuSans-subset.ttf`, Latin
//! only; license beside it) through plotters' `ab_glyph` backend: no fontconfig, freetype or
//! system font is needed, so the chart renders the same on a bare server.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The embedded font.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
/// The family name charts ask for.
const FAMILY: &str = "sans-serif";

/// One series of the chart: a name and `(iteration, percent)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its legend label.
    pub name: String,
    /// Points, in iteration order (percent, 0 to 100).
    pub points: Vec<(usize, f64)>,
}

/// Registers the embedded font once; the error says why it cannot be used.
fn font_ready() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the embedded chart font does not load".to_string())
        })
        .clone()
}

const COLORS: [RGBColor; 5] = [
    RGBColor(0x20, 0x20, 0x20),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let last = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..last as f64, -3f64..103f64)
        .map_err(e)?;
    let x_fmt = |x: &f64| format!("{x:.0}");
    let y_fmt = |y: &f64| format!("{y:.0}%");
    chart
        .configure_mesh()
        .x_labels(last.min(20) + 1)
        .y_labels(11)
        .x_desc("iteration")
        .y_desc("share of problems")
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .draw()
        .map_err(e)?;
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        // Wider lines first, so that a later series drawn over an earlier one leaves it visible.
        let width = 6u32.saturating_sub(k as u32).max(2);
        let points: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x as f64, y)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
            .map_err(e)?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xaa, 0xaa, 0xaa))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

/// A line of a [`write_lines`] chart: a legend label and `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Its legend label.
    pub name: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    lines: &[Line],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let finite = lines
        .iter()
        .flat_map(|l| l.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in finite {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(e)?;
    let x_fmt = |x: &f64| format!("{x:.0}");
    let y_fmt = |y: &f64| format!("{y:.3}");
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .draw()
        .map_err(e)?;
    for (k, line) in lines.iter().enumerate() {
        let color = COLORS[(k + 1) % COLORS.len()];
        let points: Vec<(f64, f64)> = line
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(e)?
            .label(line.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(0xaa, 0xaa, 0xaa))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

/// Writes a line chart of `lines` (axes fitted to the data; non-finite points left out) to
/// `path` in `format`: training curves, for instance.
pub fn write_lines(
    path: &Path,
    format: ImageFormat,
    title: &str,
    axes: (&str, &str),
    lines: &[Line],
    size: (u32, u32),
) -> Result<(), String> {
    font_ready()?;
    let drawn = match format {
        ImageFormat::Png => draw_lines(
            BitMapBackend::new(path, size).into_drawing_area(),
            title,
            axes,
            lines,
        ),
        ImageFormat::Svg => draw_lines(
            SVGBackend::new(path, size).into_drawing_area(),
            title,
            axes,
            lines,
        ),
    };
    drawn.map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

/// An image format a chart is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A PNG bitmap.
    Png,
    /// An SVG drawing.
    Svg,
}

/// Writes the chart to `path` in `format`, `size` being (width, height) in pixels.
pub fn write(
    path: &Path,
    format: ImageFormat,
    title: &str,
    series: &[Series],
    size: (u32, u32),
) -> Result<(), String> {
    font_ready()?;
    let drawn = match format {
        ImageFormat::Png => draw(
            BitMapBackend::new(path, size).into_drawing_area(),
            title,
            series,
        ),
        ImageFormat::Svg => draw(
            SVGBackend::new(path, size).into_drawing_area(),
            title,
            series,
        ),
    };
    drawn.map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Vec<Series> {
        vec![
            Series {
                name: "pass@1".into(),
                points: vec![(0, 50.0), (1, 75.0), (2, 100.0)],
            },
            Series {
                name: "Beyond-T".into(),
                points: vec![(0, 10.0), (1, 40.0), (2, 62.5)],
            },
        ]
    }

    #[test]
    fn png_and_svg_charts_are_written_without_system_fonts() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("chart.png");
        let svg = dir.path().join("chart.svg");
        write(&png, ImageFormat::Png, "IOF: time", &series(), (800, 480)).unwrap();
        write(&svg, ImageFormat::Svg, "IOF: time", &series(), (800, 480)).unwrap();
        let png_bytes = std::fs::read(&png).unwrap();
        assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png_bytes.len() > 5_000, "{} bytes", png_bytes.len());
        let svg_text = std::fs::read_to_string(&svg).unwrap();
        assert!(svg_text.starts_with("<svg"), "{}", &svg_text[..40]);
        assert!(svg_text.contains("Beyond-T"));
        assert!(svg_text.contains("iteration"));
        assert!(svg_text.matches("<circle").count() >= 6);
    }

    #[test]
    fn a_single_iteration_still_has_an_axis() {
        let dir = tempfile::tempdir().unwrap();
        let one = vec![Series {
            name: "pass@1".into(),
            points: vec![(0, 100.0)],
        }];
        write(
            &dir.path().join("c.svg"),
            ImageFormat::Svg,
            "one",
            &one,
            (400, 300),
        )
        .unwrap();
        write(
            &dir.path().join("c.png"),
            ImageFormat::Png,
            "one",
            &[],
            (400, 300),
        )
        .unwrap();
    }
}
