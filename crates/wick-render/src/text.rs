//! The one font and the text it draws: DejaVu Sans, embedded in the binary (no system font
//! is ever read, so a picture is the same bytes on every machine), measured and rasterised by
//! `ab_glyph`. Text is fitted by its width in pixels: [`ellipsize`] shortens a line with "…",
//! [`wrap`] breaks a caption over lines at spaces. A character the font lacks never vanishes:
//! it is drawn as the font's replacement glyph (`.notdef`, a box), or as a drawn box when that
//! glyph has no outline. A text `size` is in pixels from the font's ascent to its descent
//! (`ab_glyph`'s `PxScale`; about 1.17 × the size in CSS pixels).

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};
use image::{Rgb, RgbImage};

/// DejaVu Sans 2.37 (`assets/fonts/DejaVuSans.ttf`): Latin, Greek, Cyrillic and many more
/// scripts. Licence: the Bitstream Vera Fonts licence, with DejaVu's changes in the public
/// domain — permissive, redistribution allowed (`assets/fonts/LICENSE-DejaVu.txt`).
pub const FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// The family name the font is registered under for plotters.
pub(crate) const FONT_FAMILY: &str = "DejaVu Sans";

/// The parsed font (parsed once; the bytes are compiled in, and a unit test parses them).
pub(crate) fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        // The embedded bytes are a valid font: `the_embedded_font_parses` checks it.
        FontRef::try_from_slice(FONT_BYTES).expect("the embedded DejaVu Sans parses")
    })
}

/// Registers the font with plotters under [`FONT_FAMILY`] (once per process).
pub(crate) fn register_with_plotters() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // Cannot fail: the same bytes parse in `font()`.
        let _ = plotters::style::register_font(
            FONT_FAMILY,
            plotters::style::FontStyle::Normal,
            FONT_BYTES,
        );
    });
}

/// Whether the font has a glyph for `character`.
pub fn has_glyph(character: char) -> bool {
    font().glyph_id(character) != GlyphId(0)
}

/// The height of one line of text at `size` px, in pixels (ascent, descent and gap).
pub fn line_height(size: f32) -> u32 {
    let scaled = font().as_scaled(PxScale::from(size));
    (scaled.ascent() - scaled.descent() + scaled.line_gap()).ceil() as u32
}

/// The width of `text` drawn at `size` px, in pixels (advances and kerning).
pub fn text_width(text: &str, size: f32) -> f32 {
    let scaled = font().as_scaled(PxScale::from(size));
    let mut width = 0.0;
    let mut previous: Option<GlyphId> = None;
    for character in text.chars() {
        let id = scaled.glyph_id(character);
        if let Some(previous) = previous {
            width += scaled.kern(previous, id);
        }
        width += scaled.h_advance(id);
        previous = Some(id);
    }
    width
}

/// `text` if it fits in `max_width` pixels at `size`, else its longest prefix (whole
/// characters) followed by "…" that fits. Never cuts by a count of characters.
pub fn ellipsize(text: &str, size: f32, max_width: f32) -> String {
    if text_width(text, size) <= max_width {
        return text.to_string();
    }
    let characters: Vec<char> = text.chars().collect();
    let mut keep = characters.len();
    while keep > 0 {
        keep -= 1;
        let candidate: String =
            characters[..keep].iter().collect::<String>().trim_end().to_string() + "…";
        if text_width(&candidate, size) <= max_width {
            return candidate;
        }
    }
    "…".to_string()
}

/// `text` broken into at most `max_lines` lines no wider than `max_width` pixels at `size`:
/// at spaces where possible, inside a word only when the word alone is too wide; what does
/// not fit in the last line is ellipsised.
pub fn wrap(text: &str, size: f32, max_width: f32, max_lines: usize) -> Vec<String> {
    if max_lines == 0 {
        return Vec::new();
    }
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split(' ') {
        let joined =
            if current.is_empty() { word.to_string() } else { format!("{current} {word}") };
        if text_width(&joined, size) <= max_width {
            current = joined;
            continue;
        }
        if !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        // A word wider than the line is broken at the widest prefix that fits.
        let mut rest = word.to_string();
        while text_width(&rest, size) > max_width {
            let characters: Vec<char> = rest.chars().collect();
            let mut split = characters.len();
            while split > 1
                && text_width(&characters[..split].iter().collect::<String>(), size) > max_width
            {
                split -= 1;
            }
            lines.push(characters[..split].iter().collect());
            rest = characters[split..].iter().collect();
        }
        current = rest;
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    if lines.len() > max_lines {
        let tail = lines[max_lines - 1..].join(" ");
        lines.truncate(max_lines - 1);
        lines.push(ellipsize(&tail, size, max_width));
    }
    lines
}

/// Draws `text` with its top-left corner at `(x, y)` at `size` px, blending
/// `color` over the canvas by the glyphs' coverage; pixels outside the canvas are skipped.
/// Returns the drawn width in pixels.
pub fn draw_text(
    canvas: &mut RgbImage,
    x: i32,
    y: i32,
    text: &str,
    size: f32,
    color: Rgb<u8>,
) -> f32 {
    let font = font();
    let scale = PxScale::from(size);
    let scaled = font.as_scaled(scale);
    let baseline = y as f32 + scaled.ascent();
    let mut caret = x as f32;
    let mut previous: Option<GlyphId> = None;
    for character in text.chars() {
        let id = scaled.glyph_id(character);
        if let Some(previous) = previous {
            caret += scaled.kern(previous, id);
        }
        let advance = scaled.h_advance(id);
        let glyph = id.with_scale_and_position(scale, point(caret, baseline));
        match font.outline_glyph(glyph) {
            Some(outlined) => {
                let bounds = outlined.px_bounds();
                outlined.draw(|gx, gy, coverage| {
                    let px = bounds.min.x as i32 + gx as i32;
                    let py = bounds.min.y as i32 + gy as i32;
                    blend(canvas, px, py, color, coverage);
                });
            }
            None if id == GlyphId(0) && !character.is_whitespace() => {
                // The font has no glyph and no outlined replacement: a visible hollow box.
                let (left, right) =
                    (caret.round() as i32 + 1, (caret + advance).round() as i32 - 1);
                let (top, bottom) = ((baseline - scaled.ascent() * 0.7) as i32, baseline as i32);
                for px in left..=right {
                    blend(canvas, px, top, color, 1.0);
                    blend(canvas, px, bottom, color, 1.0);
                }
                for py in top..=bottom {
                    blend(canvas, left, py, color, 1.0);
                    blend(canvas, right, py, color, 1.0);
                }
            }
            None => {}
        }
        caret += advance;
        previous = Some(id);
    }
    caret - x as f32
}

fn blend(canvas: &mut RgbImage, x: i32, y: i32, color: Rgb<u8>, coverage: f32) {
    if x < 0 || y < 0 || x >= canvas.width() as i32 || y >= canvas.height() as i32 {
        return;
    }
    let coverage = coverage.clamp(0.0, 1.0);
    let pixel = canvas.get_pixel_mut(x as u32, y as u32);
    for (channel, target) in pixel.0.iter_mut().zip(color.0) {
        let mixed = f32::from(*channel) * (1.0 - coverage) + f32::from(target) * coverage;
        *channel = mixed.round() as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_parses_and_covers_latin_greek_cyrillic() {
        assert!(FontRef::try_from_slice(FONT_BYTES).is_ok());
        for character in "Köln café сова Ελλάδα …".chars() {
            assert!(has_glyph(character), "{character:?}");
        }
    }

    #[test]
    fn ellipsize_fits_by_pixel_width() {
        let size = 13.0;
        assert_eq!(ellipsize("tench", size, 200.0), "tench");
        let long = "English springer spaniel of the highlands";
        let width = 100.0;
        let short = ellipsize(long, size, width);
        assert!(short.ends_with('…') && text_width(&short, size) <= width, "{short}");
        // Narrow letters fit more characters than wide ones in the same width: by pixels.
        let narrow = ellipsize(&"i".repeat(80), size, width).chars().count();
        let wide = ellipsize(&"W".repeat(80), size, width).chars().count();
        assert!(narrow > 2 * wide, "{narrow} vs {wide}");
    }

    #[test]
    fn wrap_breaks_at_spaces_and_ellipsises_the_last_line() {
        let size = 13.0;
        let width = text_width("golf ball", size).max(text_width("gas pump", size)) + 1.0;
        assert_eq!(wrap("golf ball gas pump", size, width, 2), vec!["golf ball", "gas pump"]);
        let lines = wrap("golf ball gas pump chain saw", size, width, 2);
        assert_eq!(lines[0], "golf ball");
        assert!(lines[1].ends_with('…') && text_width(&lines[1], size) <= width, "{lines:?}");
        // A word wider than the line is split inside the word, never lost.
        let lines = wrap("Schwarzwälderkirschtorte", size, 60.0, 4);
        assert!(lines.len() > 1 && lines.iter().all(|l| text_width(l, size) <= 60.0));
        assert_eq!(lines.concat(), "Schwarzwälderkirschtorte");
    }

    #[test]
    fn a_character_the_font_lacks_still_draws_something() {
        // CJK is outside DejaVu Sans: the replacement glyph (a box) is drawn, not nothing.
        assert!(!has_glyph('漢'));
        let mut canvas = RgbImage::from_pixel(40, 30, Rgb([255, 255, 255]));
        draw_text(&mut canvas, 2, 2, "漢", 20.0, Rgb([0, 0, 0]));
        let dark = canvas.pixels().filter(|p| p.0[0] < 128).count();
        assert!(dark > 10, "{dark} dark pixels");
    }
}
