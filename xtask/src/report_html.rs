//! `report.html`: the reproduction report as one self-contained page — the same content as
//! `report.md`, rendered by pulldown-cmark (tables included), every picture inlined as a
//! base64 `data:` URI, so the single file can be mailed or archived and opens in any browser
//! with nothing beside it. A picture the markdown names but the run folder lacks is shown as a
//! visible note and returned to the caller, never silently dropped.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};

/// Styling kept inside the page (no external stylesheet or font).
const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;\
max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .7em;\
text-align:left}th{background:#f3f3f3}pre{background:#f6f8fa;padding:.8em;overflow-x:auto}\
img{max-width:100%;vertical-align:top;margin:.3em .3em .3em 0;border:1px solid #eee}\
code{background:#f6f8fa;padding:0 .2em}.missing{color:#b00;font-weight:bold}";

/// The page for `markdown`, whose relative image paths are read from `base`. Returns the HTML
/// and the pictures that were named but could not be read (each drawn as a visible note).
pub(crate) fn report_html(markdown: &str, base: &Path, title: &str) -> (String, Vec<PathBuf>) {
    let mut missing = Vec::new();
    let mut events = Vec::new();
    let mut parser = Parser::new_ext(markdown, Options::ENABLE_TABLES).peekable();
    while let Some(event) = parser.next() {
        match event {
            Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
                let external = dest_url.contains("://") || dest_url.starts_with("data:");
                let path = base.join(dest_url.as_ref());
                let inlined = if external { None } else { data_uri(&path) };
                match inlined {
                    Some(uri) => events.push(Event::Start(Tag::Image {
                        link_type,
                        dest_url: CowStr::from(uri),
                        title,
                        id,
                    })),
                    None => {
                        // Not inlinable: a note instead, and the alt text is skipped.
                        let shown = if external {
                            dest_url.to_string()
                        } else {
                            path.display().to_string()
                        };
                        events.push(Event::InlineHtml(CowStr::from(format!(
                            "<span class=\"missing\">[picture not inlined: {}]</span>",
                            escape(&shown)
                        ))));
                        missing.push(path);
                        for inner in parser.by_ref() {
                            if matches!(inner, Event::End(TagEnd::Image)) {
                                break;
                            }
                        }
                    }
                }
            }
            other => events.push(other),
        }
    }
    let mut body = String::new();
    pulldown_cmark::html::push_html(&mut body, events.into_iter());
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    );
    (page, missing)
}

/// `data:image/<type>;base64,...` for a PNG or JPEG file, `None` when unreadable or of
/// another type.
fn data_uri(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let mime = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else {
        return None;
    };
    Some(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `src=` and `href=` value in `html`.
    fn attribute_values<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
        html.split(&format!("{attribute}=\""))
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap_or_default())
            .collect()
    }

    #[test]
    fn the_page_is_self_contained() {
        let dir = std::env::temp_dir().join(format!("wick-report-html-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("baseline/stage-0")).unwrap();
        // A 1x1 PNG's first bytes are enough for the type; the content is inlined as is.
        let png = b"\x89PNG\r\n\x1a\nrest-of-a-png";
        std::fs::write(dir.join("baseline/stage-0/loss.png"), png).unwrap();
        std::fs::write(dir.join("baseline/confusion.png"), png).unwrap();
        let markdown = "# Report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n\
            See [the notebook](https://github.com/fastai/fastbook/blob/master/07_sizing_and_tta.ipynb).\n\n\
            ![loss](baseline/stage-0/loss.png) ![confusion matrix](baseline/confusion.png)\n\n\
            ![top losses](baseline/top_losses.png)\n";
        let (html, missing) = report_html(markdown, &dir, "Report");
        std::fs::remove_dir_all(&dir).unwrap();

        let sources = attribute_values(&html, "src");
        assert_eq!(sources.len(), 2, "{html}");
        let expected = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        );
        assert!(sources.iter().all(|src| *src == expected), "{sources:?}");
        // Links only to the web; no local file is referenced anywhere.
        for href in attribute_values(&html, "href") {
            assert!(href.starts_with("https://"), "local href {href}");
        }
        assert!(!html.contains("<link") && !html.contains("<script"));
        assert!(html.contains("<table>") && html.contains("<td>2</td>"), "{html}");
        // The missing picture is named in the page and returned, not dropped silently.
        assert_eq!(missing, vec![dir.join("baseline/top_losses.png")]);
        assert!(html.contains("[picture not inlined:") && html.contains("top_losses.png"));
    }
}
