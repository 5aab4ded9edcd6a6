//! The files a user gets from a run, built from the [`Recorder`] (and an lr_find result):
//! `metrics.jsonl` (one JSON object per epoch), the loss plot (smoothed training loss per batch
//! and validation loss per epoch), the schedule plot (lr and momentum per batch), and the lr
//! finder plot (smoothed loss against log lr, the suggestion marked). Text and chart
//! descriptions are built by pure functions; wick-render draws the charts and the `write_*`
//! functions write the files atomically. The [`crate::RunFiles`] callback calls them after
//! every epoch.
//!
//! JSON is written by hand (flat numbers and short ASCII strings) to keep serde out of the
//! library.

use std::fmt::Write as _;
use std::path::Path;

use wick_render::{AxisScale, LineChart, PALETTE, Series, VerticalMarker, stack_vertically};

use crate::error::TrainError;
use crate::recipes::LrFindResult;
use crate::recorder::{Recorder, format_time};

/// Width of the plots, in pixels.
pub const PLOT_WIDTH: u32 = 800;
/// Height of one plot panel, in pixels.
pub const PLOT_HEIGHT: u32 = 480;

/// One JSON object per recorded epoch, across every fit, each line ending in `\n`:
/// `{"fit":0,"epoch":0,"train_loss":1.2,"valid_loss":1.1,"accuracy":0.6,"seconds":61.2,"time":"01:01"}`.
/// A missing value is `null`.
pub fn metrics_jsonl(recorder: &Recorder) -> String {
    let names: Vec<String> = recorder.metrics().iter().map(|metric| metric.name()).collect();
    let mut text = String::new();
    for (fit_index, fit) in recorder.fits().iter().enumerate() {
        for row in &fit.epochs {
            let _ = write!(text, "{{\"fit\":{fit_index},\"epoch\":{}", row.epoch);
            let _ = write!(
                text,
                ",\"train_loss\":{}",
                json_number(row.train_loss.map(f64::from), row.train_loss.map(|v| v.to_string()))
            );
            let valid_loss = row.valid.as_ref().map(|valid| valid.loss);
            let _ = write!(
                text,
                ",\"valid_loss\":{}",
                json_number(valid_loss, valid_loss.map(|v| v.to_string()))
            );
            for (index, name) in names.iter().enumerate() {
                let value = row.valid.as_ref().and_then(|valid| valid.metrics.get(index).copied());
                let _ = write!(
                    text,
                    ",{}:{}",
                    json_string(name),
                    json_number(value, value.map(|v| v.to_string()))
                );
            }
            let _ = write!(
                text,
                ",\"seconds\":{}",
                json_number(Some(row.seconds), Some(format!("{:.3}", row.seconds)))
            );
            let _ = writeln!(text, ",\"time\":{}}}", json_string(&format_time(row.seconds)));
        }
    }
    text
}

/// Smoothed training loss per batch and validation loss per epoch, all fits end to end.
pub fn loss_chart(recorder: &Recorder) -> LineChart {
    let mut train = Vec::new();
    let mut valid = Vec::new();
    let mut offset = 0;
    for fit in recorder.fits() {
        train.extend(
            fit.batches
                .iter()
                .map(|b| ((offset + b.iteration + 1) as f64, f64::from(b.smooth_loss))),
        );
        valid.extend(
            fit.epochs
                .iter()
                .filter_map(|e| e.valid.as_ref().map(|v| ((offset + e.train_iter) as f64, v.loss))),
        );
        offset += fit.batches.last().map_or(0, |b| b.iteration + 1);
    }
    LineChart {
        title: "loss".into(),
        x_label: "training batches".into(),
        y_label: "loss".into(),
        x_scale: AxisScale::Linear,
        series: vec![
            Series {
                name: "train (smoothed)".into(),
                points: train,
                color: PALETTE[0],
                markers: false,
            },
            Series { name: "valid".into(), points: valid, color: PALETTE[1], markers: true },
        ],
        markers: Vec::new(),
    }
}

/// Learning rate and momentum per training batch, all fits end to end: two charts.
pub fn schedule_charts(recorder: &Recorder) -> [LineChart; 2] {
    let mut lr = Vec::new();
    let mut mom = Vec::new();
    let mut offset = 0;
    for fit in recorder.fits() {
        for b in &fit.batches {
            lr.push(((offset + b.iteration) as f64, b.lr));
            mom.push(((offset + b.iteration) as f64, b.mom));
        }
        offset += fit.batches.last().map_or(0, |b| b.iteration + 1);
    }
    let chart = |title: &str, name: &str, points, color| LineChart {
        title: title.into(),
        x_label: "training batches".into(),
        y_label: name.into(),
        x_scale: AxisScale::Linear,
        series: vec![Series { name: name.into(), points, color, markers: false }],
        markers: Vec::new(),
    };
    [chart("learning rate", "lr", lr, PALETTE[0]), chart("momentum", "mom", mom, PALETTE[2])]
}

/// fastai `plot_lr_find`: smoothed loss against lr on a log axis, without the last 5 points,
/// with the valley suggestion marked when there is one.
pub fn lr_find_chart(result: &LrFindResult) -> LineChart {
    let shown = result.lrs.len().saturating_sub(5);
    let points = result.lrs[..shown]
        .iter()
        .zip(&result.losses[..shown])
        .map(|(&lr, &loss)| (lr, f64::from(loss)))
        .collect();
    let markers = match result.valley() {
        Ok(lr) => {
            vec![VerticalMarker { x: lr, label: format!("valley {lr:.2e}"), color: PALETTE[3] }]
        }
        Err(_) => Vec::new(),
    };
    LineChart {
        title: "lr_find".into(),
        x_label: "learning rate (log scale)".into(),
        y_label: "smoothed loss".into(),
        x_scale: AxisScale::Log10,
        series: vec![Series { name: "loss".into(), points, color: PALETTE[0], markers: false }],
        markers,
    }
}

/// Writes `metrics.jsonl` (the whole history; rewritten each time, so a resumed run never
/// duplicates lines).
pub fn write_metrics_jsonl(path: &Path, recorder: &Recorder) -> Result<(), TrainError> {
    write_file(path, metrics_jsonl(recorder).as_bytes())
}

/// Writes the loss plot as PNG (`PLOT_WIDTH × PLOT_HEIGHT`).
///
/// # Errors
/// [`TrainError::Output`] naming `path` when drawing or writing fails.
pub fn write_loss_plot(path: &Path, recorder: &Recorder) -> Result<(), TrainError> {
    let image = loss_chart(recorder).render(PLOT_WIDTH, PLOT_HEIGHT).map_err(output_error(path))?;
    wick_render::write_png(path, &image).map_err(output_error(path))
}

/// Writes the lr and momentum plots, one above the other, as one PNG.
///
/// # Errors
/// [`TrainError::Output`] naming `path` when drawing or writing fails.
pub fn write_schedule_plot(path: &Path, recorder: &Recorder) -> Result<(), TrainError> {
    let [lr, mom] = schedule_charts(recorder)
        .map(|chart| chart.render(PLOT_WIDTH, PLOT_HEIGHT * 2 / 3).map_err(output_error(path)));
    wick_render::write_png(path, &stack_vertically(&[lr?, mom?])).map_err(output_error(path))
}

/// Writes the lr finder plot as PNG.
///
/// # Errors
/// [`TrainError::Output`] naming `path` when drawing or writing fails.
pub fn write_lr_find_plot(path: &Path, result: &LrFindResult) -> Result<(), TrainError> {
    let image =
        lr_find_chart(result).render(PLOT_WIDTH, PLOT_HEIGHT).map_err(output_error(path))?;
    wick_render::write_png(path, &image).map_err(output_error(path))
}

fn output_error(path: &Path) -> impl Fn(wick_render::RenderError) -> TrainError + '_ {
    move |error| TrainError::Output { path: path.to_path_buf(), reason: error.to_string() }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    wick_io::write_durably(path, bytes)
        .map_err(|e| TrainError::Output { path: path.to_path_buf(), reason: e.to_string() })
}

/// A JSON number, or `null` when missing or not finite (JSON has no NaN).
fn json_number(value: Option<f64>, text: Option<String>) -> String {
    match (value, text) {
        (Some(value), Some(text)) if value.is_finite() => text,
        _ => "null".to_string(),
    }
}

fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(quoted, "\\u{:04x}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}
