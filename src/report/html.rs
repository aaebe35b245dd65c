//! The pieces of a self-contained HTML page: escaped text, tables, sections, images inlined as data URIs and SVG
//! inlined as markup. Nothing on the page refers to anything outside it.

use base64::Engine;
use image::RgbImage;
use plotters::style::RGBColor;

use crate::outputs::grid::png_bytes;

/// The page's style sheet.
const STYLE: &str = "body{font-family:sans-serif;max-width:1400px;margin:24px auto;padding:0 16px;color:#222}\
h1{margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:36px}\
.note{color:#555;font-size:0.95em}.plots{display:flex;flex-wrap:wrap;gap:12px}\
.plots svg{border:1px solid #ddd}\
.swatch{display:inline-block;width:28px;height:4px;margin:0 6px 3px 14px;vertical-align:middle}table{border-collapse:collapse;margin:8px 0}\
td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}th{background:#f2f2f2}\
td.number{text-align:right;font-variant-numeric:tabular-nums}\
figure{display:inline-block;margin:8px 24px 8px 0;vertical-align:top}figcaption{color:#555;max-width:640px}\
img.grid{image-rendering:pixelated;border:1px solid #ddd}.stack{display:inline-block;vertical-align:top}\
.stack figure{display:block}pre{background:#f7f7f7;padding:8px;overflow-x:auto}";

/// `text` with the characters that mean something in HTML escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page titled `title` around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n\
         </head>\n<body>\n{body}\n</body>\n</html>\n",
        escape(title)
    )
}

/// A section with an anchor `id`, a heading and `body` (already HTML).
pub fn section(id: &str, title: &str, body: &str) -> String {
    format!("<section id=\"{id}\">\n<h2>{}</h2>\n{body}\n</section>\n", escape(title))
}

/// A paragraph of plain text.
pub fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", escape(text))
}

/// A table with a header row; cells are plain text, right-aligned when they parse as numbers.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let head: String = header.iter().map(|h| format!("<th>{}</th>", escape(h))).collect();
    let body: String =
        rows.iter().map(|row| format!("<tr>{}</tr>\n", row.iter().map(|c| cell(c)).collect::<String>())).collect();
    format!("<table>\n<tr>{head}</tr>\n{body}</table>\n")
}

fn cell(text: &str) -> String {
    let numeric = text.trim_end_matches('%').parse::<f64>().is_ok();
    format!("<td{}>{}</td>", if numeric { " class=\"number\"" } else { "" }, escape(text))
}

/// A line of colour swatches with their meanings: the legend shared by the plots that follow it.
pub fn legend(entries: &[(&str, RGBColor)]) -> String {
    let items: String = entries
        .iter()
        .map(|(label, RGBColor(r, g, b))| {
            format!("<span class=\"swatch\" style=\"background:rgb({r},{g},{b})\"></span>{} ", escape(label))
        })
        .collect();
    format!("<p class=\"legend\">{items}</p>\n")
}

/// SVG markup ready to sit inside the page: the XML declaration and namespace attributes (which HTML does not need)
/// are dropped.
pub fn inline_svg(svg: &str) -> String {
    let start = svg.find("<svg").unwrap_or(0);
    svg[start..]
        .replace(" xmlns=\"http://www.w3.org/2000/svg\"", "")
        .replace(" xmlns:xlink=\"http://www.w3.org/1999/xlink\"", "")
}

/// An image embedded as a PNG data URI, drawn `scale` times its size with sharp pixels, with a caption.
pub fn image_figure(image: &RgbImage, scale: u32, caption: &str) -> std::io::Result<String> {
    let data = base64::engine::general_purpose::STANDARD.encode(png_bytes(image)?);
    Ok(format!(
        "<figure><img class=\"grid\" width=\"{}\" height=\"{}\" src=\"data:image/png;base64,{data}\" alt=\"{}\">\
         <figcaption>{}</figcaption></figure>\n",
        image.width() * scale,
        image.height() * scale,
        escape(caption),
        escape(caption)
    ))
}

/// The scale that shows cells `cell` pixels high at about 64 pixels, between 1 and 6.
pub fn display_scale(cell: u32) -> u32 {
    (64 / cell.max(1)).clamp(1, 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_numbers_are_right_aligned() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        let html = table(&["what", "nats"], &[vec!["KL <q>".into(), "1.5".into()]]);
        assert!(html.contains("<td>KL &lt;q&gt;</td><td class=\"number\">1.5</td>"), "{html}");
    }

    #[test]
    fn svg_loses_its_namespace_and_images_become_data() {
        let svg = "<?xml version=\"1.0\"?>\n<svg width=\"2\" xmlns=\"http://www.w3.org/2000/svg\"><rect/></svg>";
        assert_eq!(inline_svg(svg), "<svg width=\"2\"><rect/></svg>");
        let figure = image_figure(&RgbImage::new(3, 2), 2, "a <grid>").unwrap();
        assert!(
            figure.contains("src=\"data:image/png;base64,iVBORw0KGgo") && figure.contains("width=\"6\""),
            "{figure}"
        );
        assert!(figure.contains("a &lt;grid&gt;"));
    }
}
