//! The confusion matrix as fastai's `plot_confusion_matrix` draws it: one cell per (actual,
//! predicted) pair shaded in blues by its share of the row, the count written in it, the class
//! names on both axes (the predicted ones turned upright), "Actual" and "Predicted" as axis
//! titles. Names are fitted by pixel width and ellipsised, never cut by character count.

use image::{Rgb, RgbImage};

use crate::text::{draw_text, ellipsize, line_height, text_width};

const CELL: u32 = 44;
const TEXT: f32 = 13.0;
const TITLE: f32 = 16.0;
/// The widest a class name may be drawn, in pixels.
const MAX_NAME_WIDTH: f32 = 160.0;
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
/// matplotlib's `Blues` at its darkest.
const DARK_BLUE: [f32; 3] = [8.0, 48.0, 107.0];

/// Draws `counts[actual][predicted]` with the class `names` (one per row, in order).
pub fn confusion_matrix_image(counts: &[Vec<u64>], names: &[String]) -> RgbImage {
    let k = counts.len() as u32;
    let labels: Vec<String> = (0..counts.len())
        .map(|class| ellipsize(names.get(class).map_or("?", String::as_str), TEXT, MAX_NAME_WIDTH))
        .collect();
    let label_width =
        labels.iter().map(|name| text_width(name, TEXT).ceil() as u32).max().unwrap_or(0) + 8;
    let line = line_height(TEXT);
    let title_line = line_height(TITLE);
    // Left: "Actual" turned upright, then the row names. Top: the title. Bottom: the column
    // names turned upright, then "Predicted".
    let left = title_line + 4 + label_width;
    let top = title_line + 8;
    let bottom_band = label_width + 4 + title_line + 4;
    let width = left + k * CELL + 8;
    let height = top + k * CELL + bottom_band;
    let mut canvas = RgbImage::from_pixel(width.max(left + 120), height, WHITE);

    let title = "Confusion matrix";
    let title_x = left as f32 + (k * CELL) as f32 / 2.0 - text_width(title, TITLE) / 2.0;
    draw_text(&mut canvas, title_x.max(0.0) as i32, 2, title, TITLE, BLACK);

    for (actual, row) in counts.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1);
        let y0 = top + actual as u32 * CELL;
        let name = &labels[actual];
        let name_x = left as f32 - 6.0 - text_width(name, TEXT);
        draw_text(&mut canvas, name_x as i32, (y0 + (CELL - line) / 2) as i32, name, TEXT, BLACK);
        for (predicted, &count) in row.iter().enumerate() {
            let share = count as f32 / total as f32;
            let shade = Rgb(DARK_BLUE.map(|dark| (255.0 + (dark - 255.0) * share).round() as u8));
            let x0 = left + predicted as u32 * CELL;
            for y in y0..y0 + CELL - 1 {
                for x in x0..x0 + CELL - 1 {
                    canvas.put_pixel(x, y, shade);
                }
            }
            let number = count.to_string();
            let number_x = x0 as f32 + (CELL as f32 - text_width(&number, TEXT)) / 2.0;
            let color = if share > 0.5 { WHITE } else { BLACK };
            draw_text(
                &mut canvas,
                number_x as i32,
                (y0 + (CELL - line) / 2) as i32,
                &number,
                TEXT,
                color,
            );
        }
    }
    // Column names, upright: drawn on a strip that is then turned a quarter to the left.
    for (predicted, name) in labels.iter().enumerate() {
        let mut strip = RgbImage::from_pixel(label_width, line, WHITE);
        let strip_x = label_width as f32 - 4.0 - text_width(name, TEXT);
        draw_text(&mut strip, strip_x as i32, 0, name, TEXT, BLACK);
        let upright = image::imageops::rotate270(&strip);
        let x = left + predicted as u32 * CELL + (CELL - line) / 2;
        image::imageops::replace(
            &mut canvas,
            &upright,
            i64::from(x),
            i64::from(top + k * CELL + 4),
        );
    }
    let predicted = "Predicted";
    let predicted_x = left as f32 + (k * CELL) as f32 / 2.0 - text_width(predicted, TITLE) / 2.0;
    let predicted_y = top + k * CELL + 4 + label_width + 2;
    draw_text(
        &mut canvas,
        predicted_x.max(0.0) as i32,
        predicted_y as i32,
        predicted,
        TITLE,
        BLACK,
    );
    let actual = "Actual";
    let mut strip =
        RgbImage::from_pixel(text_width(actual, TITLE).ceil() as u32 + 2, title_line, WHITE);
    draw_text(&mut strip, 1, 0, actual, TITLE, BLACK);
    let upright = image::imageops::rotate270(&strip);
    let actual_y = (top + k * CELL / 2).saturating_sub(upright.height() / 2);
    image::imageops::replace(&mut canvas, &upright, 2, i64::from(actual_y));
    canvas
}
