//! A tiny built-in bitmap font (3 x 5 pixels per glyph: digits, capital letters and a little punctuation), so image
//! grids can carry labels without any font file on the machine. Lower-case letters are drawn as capitals; other
//! characters as blanks.

use image::{Rgb, RgbImage};

/// Glyph width and height in font pixels, and the gap after each glyph.
const GLYPH_WIDTH: u32 = 3;
const GLYPH_HEIGHT: u32 = 5;
const GAP: u32 = 1;

/// Each glyph's five rows, three bits each (the highest bit is the left column).
const GLYPHS: [(char, [u8; 5]); 42] = [
    ('0', [0b111, 0b101, 0b101, 0b101, 0b111]),
    ('1', [0b010, 0b110, 0b010, 0b010, 0b111]),
    ('2', [0b111, 0b001, 0b111, 0b100, 0b111]),
    ('3', [0b111, 0b001, 0b111, 0b001, 0b111]),
    ('4', [0b101, 0b101, 0b111, 0b001, 0b001]),
    ('5', [0b111, 0b100, 0b111, 0b001, 0b111]),
    ('6', [0b111, 0b100, 0b111, 0b101, 0b111]),
    ('7', [0b111, 0b001, 0b010, 0b010, 0b010]),
    ('8', [0b111, 0b101, 0b111, 0b101, 0b111]),
    ('9', [0b111, 0b101, 0b111, 0b001, 0b111]),
    ('A', [0b010, 0b101, 0b111, 0b101, 0b101]),
    ('B', [0b110, 0b101, 0b110, 0b101, 0b110]),
    ('C', [0b011, 0b100, 0b100, 0b100, 0b011]),
    ('D', [0b110, 0b101, 0b101, 0b101, 0b110]),
    ('E', [0b111, 0b100, 0b110, 0b100, 0b111]),
    ('F', [0b111, 0b100, 0b110, 0b100, 0b100]),
    ('G', [0b011, 0b100, 0b101, 0b101, 0b011]),
    ('H', [0b101, 0b101, 0b111, 0b101, 0b101]),
    ('I', [0b111, 0b010, 0b010, 0b010, 0b111]),
    ('J', [0b001, 0b001, 0b001, 0b101, 0b010]),
    ('K', [0b101, 0b101, 0b110, 0b101, 0b101]),
    ('L', [0b100, 0b100, 0b100, 0b100, 0b111]),
    ('M', [0b101, 0b111, 0b111, 0b101, 0b101]),
    ('N', [0b110, 0b101, 0b101, 0b101, 0b101]),
    ('O', [0b010, 0b101, 0b101, 0b101, 0b010]),
    ('P', [0b110, 0b101, 0b110, 0b100, 0b100]),
    ('Q', [0b010, 0b101, 0b101, 0b110, 0b011]),
    ('R', [0b110, 0b101, 0b110, 0b101, 0b101]),
    ('S', [0b011, 0b100, 0b010, 0b001, 0b110]),
    ('T', [0b111, 0b010, 0b010, 0b010, 0b010]),
    ('U', [0b101, 0b101, 0b101, 0b101, 0b111]),
    ('V', [0b101, 0b101, 0b101, 0b101, 0b010]),
    ('W', [0b101, 0b101, 0b111, 0b111, 0b101]),
    ('X', [0b101, 0b101, 0b010, 0b101, 0b101]),
    ('Y', [0b101, 0b101, 0b010, 0b010, 0b010]),
    ('Z', [0b111, 0b001, 0b010, 0b100, 0b111]),
    ('-', [0b000, 0b000, 0b111, 0b000, 0b000]),
    ('+', [0b000, 0b010, 0b111, 0b010, 0b000]),
    ('.', [0b000, 0b000, 0b000, 0b000, 0b010]),
    (':', [0b000, 0b010, 0b000, 0b010, 0b000]),
    ('=', [0b000, 0b111, 0b000, 0b111, 0b000]),
    ('>', [0b100, 0b010, 0b001, 0b010, 0b100]),
];

/// Width in pixels of `text` drawn at `scale` (each font pixel a `scale` x `scale` square).
pub fn text_width(text: &str, scale: u32) -> u32 {
    let glyphs = text.chars().count() as u32;
    (glyphs * (GLYPH_WIDTH + GAP)).saturating_sub(GAP) * scale
}

/// Height in pixels of a line of text at `scale`.
pub fn text_height(scale: u32) -> u32 {
    GLYPH_HEIGHT * scale
}

/// Draws `text` with its top-left corner at (`left`, `top`); pixels falling outside the image are skipped.
pub fn draw_text(image: &mut RgbImage, text: &str, (left, top): (u32, u32), scale: u32, colour: Rgb<u8>) {
    for (index, character) in text.chars().enumerate() {
        let Some(rows) = glyph(character) else { continue };
        let x0 = left + index as u32 * (GLYPH_WIDTH + GAP) * scale;
        for (row, bits) in rows.iter().enumerate() {
            for column in (0..GLYPH_WIDTH).filter(|c| bits & (1 << (GLYPH_WIDTH - 1 - c)) != 0) {
                fill_square(image, (x0 + column * scale, top + row as u32 * scale), scale, colour);
            }
        }
    }
}

fn glyph(character: char) -> Option<&'static [u8; 5]> {
    let wanted = character.to_ascii_uppercase();
    GLYPHS.iter().find(|(c, _)| *c == wanted).map(|(_, rows)| rows)
}

fn fill_square(image: &mut RgbImage, (x, y): (u32, u32), size: u32, colour: Rgb<u8>) {
    for dy in 0..size {
        for dx in 0..size {
            if x + dx < image.width() && y + dy < image.height() {
                image.put_pixel(x + dx, y + dy, colour);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_are_drawn_where_their_bits_say() {
        let mut image = RgbImage::new(8, 5);
        let white = Rgb([255, 255, 255]);
        draw_text(&mut image, "1-", (0, 0), 1, white);
        assert_eq!(text_width("1-", 1), 7);
        assert_eq!(image.get_pixel(1, 0), &white, "the top of the 1");
        assert_eq!(image.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(image.get_pixel(4, 2), &white, "the dash");
        assert_eq!(image.get_pixel(4, 1), &Rgb([0, 0, 0]));
        let lower = {
            let mut other = RgbImage::new(3, 5);
            draw_text(&mut other, "k", (0, 0), 1, white);
            other
        };
        let mut upper = RgbImage::new(3, 5);
        draw_text(&mut upper, "K", (0, 0), 1, white);
        assert_eq!(lower, upper);
    }
}
