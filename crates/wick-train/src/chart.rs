//! A small line-chart renderer for the training plots: axes with ticks and labels, a linear or
//! log10 x axis, several series with a legend, and vertical markers, drawn into an RGB image.
//!
//! Why not plotters: its text rendering needs font files (or a system font library), which would
//! make the training crate depend on what is installed on the machine. Here every glyph comes
//! from wick-data's built-in 8x8 bitmap font ([`wick_data::show::draw_text`]) and every pixel
//! from the `image` crate, so the PNGs are identical everywhere. The price is plain looks: 1-pixel
//! text at 8 px, no anti-aliasing.

use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use wick_data::show::draw_text;

/// Colours for successive series (matplotlib's first four).
pub const PALETTE: [Rgb<u8>; 4] =
    [Rgb([31, 119, 180]), Rgb([255, 127, 14]), Rgb([44, 160, 44]), Rgb([214, 39, 40])];

const GLYPH: i64 = 8;
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const MARGIN_LEFT: i64 = 84;
const MARGIN_RIGHT: i64 = 24;
const MARGIN_TOP: i64 = 40;
const MARGIN_BOTTOM: i64 = 44;

/// How the x axis maps values to pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AxisScale {
    /// Linear.
    Linear,
    /// Logarithmic (base 10); points with x ≤ 0 are left out.
    Log10,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points in drawing order; non-finite points break the line.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub color: Rgb<u8>,
    /// Draw a small square at every point (for sparse series such as per-epoch values).
    pub markers: bool,
}

/// A labelled vertical line (for example the suggested lr).
#[derive(Debug, Clone, PartialEq)]
pub struct VerticalMarker {
    /// Where, in data units.
    pub x: f64,
    /// Text drawn beside it.
    pub label: String,
    /// Colour.
    pub color: Rgb<u8>,
}

/// A chart description; [`LineChart::render`] draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Drawn above the plot.
    pub title: String,
    /// Drawn under the x axis.
    pub x_label: String,
    /// Drawn above the y axis.
    pub y_label: String,
    /// The x axis scale.
    pub x_scale: AxisScale,
    /// The lines.
    pub series: Vec<Series>,
    /// Vertical markers.
    pub markers: Vec<VerticalMarker>,
}

impl LineChart {
    /// Draws the chart on a `width × height` white canvas.
    pub fn render(&self, width: u32, height: u32) -> RgbImage {
        let mut canvas = RgbImage::from_pixel(width, height, WHITE);
        let plot = Rect {
            left: MARGIN_LEFT,
            top: MARGIN_TOP,
            right: i64::from(width) - MARGIN_RIGHT,
            bottom: i64::from(height) - MARGIN_BOTTOM,
        };
        text(&mut canvas, MARGIN_LEFT, 8, &self.title, BLACK);
        text(&mut canvas, 4, MARGIN_TOP - 14, &self.y_label, BLACK);
        let x_label_x = (plot.left + plot.right) / 2 - GLYPH * self.x_label.len() as i64 / 2;
        text(&mut canvas, x_label_x, i64::from(height) - 14, &self.x_label, BLACK);
        if plot.right <= plot.left + 10 || plot.bottom <= plot.top + 10 {
            return canvas;
        }
        let to_axis = |x: f64| match self.x_scale {
            AxisScale::Linear => Some(x),
            AxisScale::Log10 => (x > 0.0).then(|| x.log10()),
        };
        let points = || {
            self.series.iter().flat_map(|series| series.points.iter()).filter_map(|&(x, y)| {
                let x = to_axis(x)?;
                (x.is_finite() && y.is_finite()).then_some((x, y))
            })
        };
        let (x_min, x_max) = padded_range(points().map(|(x, _)| x), 0.0);
        let (y_min, y_max) = padded_range(points().map(|(_, y)| y), 0.05);
        let map = Mapping { plot, x_min, x_max, y_min, y_max };

        for tick in nice_ticks(y_min, y_max) {
            let y = map.y(tick);
            line(&mut canvas, plot.left, y, plot.right, y, GRID, &plot);
            let label = tick_label(tick, tick_step(y_min, y_max));
            let label_x = plot.left - 6 - GLYPH * label.len() as i64;
            text(&mut canvas, label_x, y - GLYPH / 2, &label, BLACK);
        }
        let x_ticks = match self.x_scale {
            AxisScale::Linear => nice_ticks(x_min, x_max),
            AxisScale::Log10 => log_ticks(x_min, x_max),
        };
        for tick in x_ticks {
            let x = map.x(tick);
            line(&mut canvas, x, plot.top, x, plot.bottom, GRID, &plot);
            let label = match self.x_scale {
                AxisScale::Linear => tick_label(tick, tick_step(x_min, x_max)),
                AxisScale::Log10 => power_of_ten_label(tick),
            };
            text(&mut canvas, x - GLYPH * label.len() as i64 / 2, plot.bottom + 6, &label, BLACK);
        }
        line(&mut canvas, plot.left, plot.bottom, plot.right, plot.bottom, BLACK, &plot);
        line(&mut canvas, plot.left, plot.top, plot.left, plot.bottom, BLACK, &plot);

        for marker in &self.markers {
            let Some(axis_x) = to_axis(marker.x).filter(|x| (x_min..=x_max).contains(x)) else {
                continue;
            };
            let x = map.x(axis_x);
            for y in (plot.top..plot.bottom).step_by(6) {
                line(&mut canvas, x, y, x, (y + 3).min(plot.bottom), marker.color, &plot);
            }
            text(&mut canvas, x + 4, plot.top + 4, &marker.label, marker.color);
        }
        for series in &self.series {
            let mut previous: Option<(i64, i64)> = None;
            for &(x, y) in &series.points {
                let point = to_axis(x)
                    .filter(|x| x.is_finite() && y.is_finite())
                    .map(|x| (map.x(x), map.y(y)));
                if let (Some(from), Some(to)) = (previous, point) {
                    thick_line(&mut canvas, from, to, series.color, &plot);
                }
                if let (Some((px, py)), true) = (point, series.markers) {
                    for dy in -2..=2 {
                        line(&mut canvas, px - 2, py + dy, px + 2, py + dy, series.color, &plot);
                    }
                }
                previous = point;
            }
        }
        self.draw_legend(&mut canvas, &plot);
        canvas
    }

    fn draw_legend(&self, canvas: &mut RgbImage, plot: &Rect) {
        if self.series.is_empty() {
            return;
        }
        let longest = self.series.iter().map(|s| s.name.len()).max().unwrap_or(0) as i64;
        let box_width = 34 + GLYPH * longest;
        let left = plot.right - box_width - 6;
        let top = plot.top + 6;
        let bottom = top + 6 + 14 * self.series.len() as i64;
        for y in top..=bottom {
            line(canvas, left, y, left + box_width, y, WHITE, plot);
        }
        for (x0, y0, x1, y1) in
            [(left, top, left + box_width, top), (left, bottom, left + box_width, bottom)]
        {
            line(canvas, x0, y0, x1, y1, GRID, plot);
        }
        for (index, series) in self.series.iter().enumerate() {
            let y = top + 10 + 14 * index as i64;
            thick_line(canvas, (left + 6, y), (left + 24, y), series.color, plot);
            text(canvas, left + 30, y - GLYPH / 2, &series.name, BLACK);
        }
    }
}

/// Encodes an image as PNG bytes.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes).write_image(
        image.as_raw(),
        image.width(),
        image.height(),
        ExtendedColorType::Rgb8,
    )?;
    Ok(bytes)
}

/// Images one above the other, as wide as the widest.
pub fn stack_vertically(images: &[RgbImage]) -> RgbImage {
    let width = images.iter().map(RgbImage::width).max().unwrap_or(1);
    let height = images.iter().map(RgbImage::height).sum::<u32>().max(1);
    let mut canvas = RgbImage::from_pixel(width, height, WHITE);
    let mut top = 0;
    for image in images {
        image::imageops::replace(&mut canvas, image, 0, i64::from(top));
        top += image.height();
    }
    canvas
}

#[derive(Debug, Clone, Copy)]
struct Rect {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
}

impl Rect {
    fn contains(&self, x: i64, y: i64) -> bool {
        (self.left..=self.right).contains(&x) && (self.top..=self.bottom).contains(&y)
    }
}

struct Mapping {
    plot: Rect,
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
}

impl Mapping {
    fn x(&self, x: f64) -> i64 {
        let t = (x - self.x_min) / (self.x_max - self.x_min);
        self.plot.left + (t * (self.plot.right - self.plot.left) as f64).round() as i64
    }

    fn y(&self, y: f64) -> i64 {
        let t = (y - self.y_min) / (self.y_max - self.y_min);
        self.plot.bottom - (t * (self.plot.bottom - self.plot.top) as f64).round() as i64
    }
}

/// The range of `values` widened by `padding` of its span on each side; a degenerate range
/// becomes one unit wide.
fn padded_range(values: impl Iterator<Item = f64>, padding: f64) -> (f64, f64) {
    let (min, max) =
        values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !min.is_finite() {
        return (0.0, 1.0);
    }
    if max - min <= f64::EPSILON * max.abs().max(1.0) {
        return (min - 0.5, max + 0.5);
    }
    let pad = (max - min) * padding;
    (min - pad, max + pad)
}

/// A 1-2-5 step giving about five ticks over `[min, max]`.
fn tick_step(min: f64, max: f64) -> f64 {
    let raw = (max - min) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let normalized = raw / magnitude;
    let nice = if normalized < 1.5 {
        1.0
    } else if normalized < 3.5 {
        2.0
    } else if normalized < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn nice_ticks(min: f64, max: f64) -> Vec<f64> {
    let step = tick_step(min, max);
    if !(step.is_finite() && step > 0.0) {
        return Vec::new();
    }
    let first = (min / step).ceil() as i64;
    let last = (max / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Ticks at whole decades of a log10 axis (every other decade beyond eight).
fn log_ticks(min: f64, max: f64) -> Vec<f64> {
    let (first, last) = (min.ceil() as i64, max.floor() as i64);
    if last < first {
        return nice_ticks(min, max);
    }
    let stride = if last - first > 8 { 2 } else { 1 };
    (first..=last).step_by(stride).map(|k| k as f64).collect()
}

/// A tick value with as many decimals as its step needs, or in short scientific notation for
/// very small or large steps.
fn tick_label(value: f64, step: f64) -> String {
    if value.abs() < step * 1e-9 {
        return "0".to_string();
    }
    if step >= 1e-3 && value.abs() < 1e6 {
        let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
        format!("{value:.decimals$}")
    } else {
        short_scientific(value)
    }
}

/// `10^exponent` for a log axis tick: `1e-7`, `1e0`, `1e1`.
fn power_of_ten_label(exponent: f64) -> String {
    if (exponent - exponent.round()).abs() < 1e-9 {
        format!("1e{}", exponent.round() as i64)
    } else {
        short_scientific(10f64.powf(exponent))
    }
}

/// `2.5e-4`, `1e-3`: Rust's `{:.1e}` without a trailing `.0`.
fn short_scientific(value: f64) -> String {
    format!("{value:.1e}").replace(".0e", "e")
}

fn text(canvas: &mut RgbImage, x: i64, y: i64, content: &str, color: Rgb<u8>) {
    if x < 0 || y < 0 || content.is_empty() {
        return;
    }
    let max_width = canvas.width().saturating_sub(x as u32);
    draw_text(canvas, x as u32, y as u32, content, 1, max_width, color);
}

/// Bresenham's line, clipped to `clip`.
fn line(canvas: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>, clip: &Rect) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut error) = (x0, y0, dx + dy);
    loop {
        if clip.contains(x, y) && x < i64::from(canvas.width()) && y < i64::from(canvas.height()) {
            canvas.put_pixel(x as u32, y as u32, color);
        }
        if x == x1 && y == y1 {
            break;
        }
        let doubled = 2 * error;
        if doubled >= dy {
            error += dy;
            x += sx;
        }
        if doubled <= dx {
            error += dx;
            y += sy;
        }
    }
}

/// A two-pixel-wide line.
fn thick_line(
    canvas: &mut RgbImage,
    from: (i64, i64),
    to: (i64, i64),
    color: Rgb<u8>,
    clip: &Rect,
) {
    line(canvas, from.0, from.1, to.0, to.1, color, clip);
    line(canvas, from.0, from.1 + 1, to.0, to.1 + 1, color, clip);
}
