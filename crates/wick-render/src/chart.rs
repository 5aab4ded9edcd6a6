//! Line charts (the loss, schedule and lr-finder plots) drawn by plotters into an RGB buffer:
//! axes with ticks, labels and a light grid, a linear or log10 x axis, several series with a
//! legend (when there are several), point markers for sparse series, dashed vertical markers. Text uses the embedded
//! font (registered with plotters' `ab_glyph` backend), so no system font is read.

use image::{Rgb, RgbImage};
use plotters::prelude::*;

use crate::error::{RenderError, Result};
use crate::text::{FONT_FAMILY, register_with_plotters};

/// Colours for successive series (matplotlib's first four).
pub const PALETTE: [Rgb<u8>; 4] =
    [Rgb([31, 119, 180]), Rgb([255, 127, 14]), Rgb([44, 160, 44]), Rgb([214, 39, 40])];

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
    /// `(x, y)` points in drawing order; a non-finite point breaks the line.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub color: Rgb<u8>,
    /// Draw a dot at every point (for sparse series such as per-epoch values).
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
    /// Drawn beside the y axis.
    pub y_label: String,
    /// The x axis scale.
    pub x_scale: AxisScale,
    /// The lines.
    pub series: Vec<Series>,
    /// Vertical markers.
    pub markers: Vec<VerticalMarker>,
}

/// Where the data lie in a rendered chart: the plotting area in pixels (inclusive) and the
/// data ranges it spans (the x range in axis units: log10 of x on a log axis).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotArea {
    /// Leftmost pixel column of the plotting area.
    pub left: i32,
    /// Topmost pixel row.
    pub top: i32,
    /// Rightmost pixel column.
    pub right: i32,
    /// Bottom pixel row.
    pub bottom: i32,
    /// `(min, max)` of the x axis, in axis units.
    pub x_range: (f64, f64),
    /// `(min, max)` of the y axis.
    pub y_range: (f64, f64),
}

impl PlotArea {
    /// The pixel of the axis-unit point `(x, y)` (x already log10 on a log axis), linear
    /// interpolation between the area's edges, y growing upwards.
    pub fn pixel(&self, x: f64, y: f64) -> (i32, i32) {
        let tx = (x - self.x_range.0) / (self.x_range.1 - self.x_range.0);
        let ty = (y - self.y_range.0) / (self.y_range.1 - self.y_range.0);
        (
            self.left + (tx * f64::from(self.right - self.left)).round() as i32,
            self.bottom - (ty * f64::from(self.bottom - self.top)).round() as i32,
        )
    }
}

fn color(rgb: Rgb<u8>) -> RGBColor {
    RGBColor(rgb.0[0], rgb.0[1], rgb.0[2])
}

fn draw_error(error: impl std::fmt::Display) -> RenderError {
    RenderError::Draw(error.to_string())
}

impl LineChart {
    fn to_axis(&self, x: f64) -> Option<f64> {
        match self.x_scale {
            AxisScale::Linear => Some(x),
            AxisScale::Log10 => (x > 0.0).then(|| x.log10()),
        }
    }

    /// The finite points of a series in axis units, split where a point is not finite.
    fn segments(&self, series: &Series) -> Vec<Vec<(f64, f64)>> {
        let mut segments = vec![Vec::new()];
        for &(x, y) in &series.points {
            match self.to_axis(x).filter(|x| x.is_finite() && y.is_finite()) {
                Some(x) => segments.last_mut().map_or((), |segment| segment.push((x, y))),
                None if segments.last().is_some_and(|s| !s.is_empty()) => segments.push(Vec::new()),
                None => {}
            }
        }
        segments
    }

    /// Draws the chart on a `width × height` white canvas.
    ///
    /// # Errors
    /// [`RenderError::Draw`] when plotters fails (a canvas too small for the axes).
    pub fn render(&self, width: u32, height: u32) -> Result<RgbImage> {
        self.render_with_area(width, height).map(|(image, _)| image)
    }

    /// [`LineChart::render`], also returning where the plotting area lies.
    ///
    /// # Errors
    /// As [`LineChart::render`].
    pub fn render_with_area(&self, width: u32, height: u32) -> Result<(RgbImage, PlotArea)> {
        register_with_plotters();
        let segments: Vec<Vec<Vec<(f64, f64)>>> =
            self.series.iter().map(|series| self.segments(series)).collect();
        let all_points = || segments.iter().flatten().flatten();
        let x_range = padded_range(all_points().map(|&(x, _)| x), 0.0);
        let y_range = padded_range(all_points().map(|&(_, y)| y), 0.05);
        let mut buffer = vec![255u8; width as usize * height as usize * 3];
        let area = {
            let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, (FONT_FAMILY, 18))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
                .map_err(draw_error)?;
            let log_label = |exponent: &f64| power_of_ten_label(*exponent);
            let linear_label = |value: &f64| linear_label(*value);
            let mut mesh = chart.configure_mesh();
            mesh.x_desc(self.x_label.as_str())
                .y_label_formatter(&linear_label)
                .x_label_formatter(&linear_label)
                .y_desc(self.y_label.as_str())
                .label_style((FONT_FAMILY, 13))
                .axis_desc_style((FONT_FAMILY, 14))
                .bold_line_style(RGBColor(225, 225, 225))
                .light_line_style(RGBColor(245, 245, 245));
            if self.x_scale == AxisScale::Log10 {
                mesh.x_label_formatter(&log_label);
            }
            mesh.draw().map_err(draw_error)?;

            for marker in &self.markers {
                let Some(x) =
                    self.to_axis(marker.x).filter(|x| (x_range.0..=x_range.1).contains(x))
                else {
                    continue;
                };
                let style = color(marker.color).stroke_width(2);
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x, y_range.0), (x, y_range.1)],
                        6,
                        4,
                        style,
                    ))
                    .map_err(draw_error)?;
                let font = (FONT_FAMILY, 13).into_font().color(&color(marker.color));
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!(" {}", marker.label),
                        (x, y_range.1),
                        font,
                    )))
                    .map_err(draw_error)?;
            }
            for (series, pieces) in self.series.iter().zip(&segments) {
                let style = color(series.color).stroke_width(2);
                for (index, piece) in pieces.iter().enumerate() {
                    let drawn = chart
                        .draw_series(LineSeries::new(piece.iter().copied(), style))
                        .map_err(draw_error)?;
                    if index == 0 {
                        drawn
                            .label(series.name.as_str())
                            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
                    }
                    if series.markers {
                        let dot = color(series.color).filled();
                        chart
                            .draw_series(piece.iter().map(|&point| Circle::new(point, 3, dot)))
                            .map_err(draw_error)?;
                    }
                }
            }
            // As fastai: a legend only where there is more than one line to tell apart (a
            // single series is named by the y axis).
            if self.series.len() > 1 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .label_font((FONT_FAMILY, 13))
                    .background_style(WHITE.mix(0.9))
                    .border_style(RGBColor(200, 200, 200))
                    .draw()
                    .map_err(draw_error)?;
            }
            let (columns, rows) = chart.plotting_area().get_pixel_range();
            root.present().map_err(draw_error)?;
            PlotArea {
                left: columns.start,
                top: rows.start,
                right: columns.end - 1,
                bottom: rows.end - 1,
                x_range,
                y_range,
            }
        };
        let image = RgbImage::from_raw(width, height, buffer)
            .ok_or_else(|| RenderError::Draw("the chart buffer has the wrong size".into()))?;
        Ok((image, area))
    }
}

/// Images one above the other, as wide as the widest, on white.
pub fn stack_vertically(images: &[RgbImage]) -> RgbImage {
    let width = images.iter().map(RgbImage::width).max().unwrap_or(1);
    let height = images.iter().map(RgbImage::height).sum::<u32>().max(1);
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut top = 0;
    for image in images {
        image::imageops::replace(&mut canvas, image, 0, i64::from(top));
        top += image.height();
    }
    canvas
}

/// The range of `values` widened by `padding` of its span on each side; no values gives
/// `(0, 1)` and a single value a range one unit wide around it.
fn padded_range<'a>(values: impl Iterator<Item = f64> + 'a, padding: f64) -> (f64, f64) {
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

/// A linear axis tick: whole numbers without decimals (`40`, not `40.0`), others with up to
/// four decimals and no trailing zeros, very small or large ones in short scientific notation.
fn linear_label(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude < 1e-12 {
        return "0".to_string();
    }
    if (value - value.round()).abs() < 1e-9 * magnitude.max(1.0) && magnitude < 1e7 {
        return format!("{value:.0}");
    }
    if !(1e-3..1e7).contains(&magnitude) {
        return format!("{value:.1e}").replace(".0e", "e");
    }
    let text = format!("{value:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A log axis tick: `1e-7`, `1e0` at whole decades, `3.2e-5` between them.
fn power_of_ten_label(exponent: f64) -> String {
    if (exponent - exponent.round()).abs() < 1e-9 {
        format!("1e{}", exponent.round() as i64)
    } else {
        format!("{:.1e}", 10f64.powf(exponent)).replace(".0e", "e")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_and_ranges() {
        assert_eq!(power_of_ten_label(-3.0), "1e-3");
        assert_eq!(linear_label(40.0), "40");
        assert_eq!(linear_label(0.5), "0.5");
        assert_eq!(linear_label(-0.25), "-0.25");
        assert_eq!(linear_label(1e-12), "0");
        assert_eq!(linear_label(0.0004), "4e-4");
        assert_eq!(power_of_ten_label(0.0), "1e0");
        assert_eq!(power_of_ten_label(2.0_f64.log10() - 4.0), "2e-4");
        assert_eq!(padded_range([].into_iter(), 0.05), (0.0, 1.0));
        assert_eq!(padded_range([2.0].into_iter(), 0.05), (1.5, 2.5));
        let (lo, hi) = padded_range([0.0, 10.0].into_iter(), 0.05);
        assert!((lo + 0.5).abs() < 1e-12 && (hi - 10.5).abs() < 1e-12);
    }
}
