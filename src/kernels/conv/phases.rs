//! Stride-2 im2col and col2im through the image's four phases.
//!
//! With stride 2, kernel offset (ky, kx) reads pixel (2 oy + ky - padding, 2 ox + kx - padding) at output position
//! (oy, ox): always the same phase of the image (row parity a, column parity b), shifted by a fixed amount. So once
//! the image is split into its four phase planes, P_ab[y][x] = image[2 y + a][2 x + b], an im2col row is that
//! plane shifted: cols[oy][ox] = P_ab[oy + sy][ox + sx]. Where the output is half the image in each direction
//! (kernel - 2 padding is 1 or 2: the 4 x 4, padding 1 convolutions of the disentanglement architecture), a phase
//! plane's rows are as long as the output's, so a whole im2col row is one contiguous copy of its plane (col2im one
//! contiguous addition), with the few columns that fall in the padding masked out on the way. The strided copies of
//! [`super::ConvGeometry::unfold`] did the same work a line of 4-32 values at a time, their per-line work a third
//! of a conv model's training step.

use super::{put_scratch, take_scratch, ConvGeometry, Scratch};

impl ConvGeometry {
    /// Whether the phases take this geometry: stride 2 over even sides, with half the side in outputs each way.
    pub(super) fn splits_into_phases(&self) -> bool {
        self.stride == 2
            && self.height.is_multiple_of(2)
            && self.width.is_multiple_of(2)
            && self.out_height == self.height / 2
            && self.out_width == self.width / 2
    }

    /// Values of one phase plane: the output positions.
    fn phase_len(&self) -> usize {
        self.out_height * self.out_width
    }

    /// The phase plane kernel offset (ky, kx) reads among a channel's four (2 a + b for row parity a and column
    /// parity b), and the shift sy * width + sx from an output position to its pixel in that plane.
    fn phase_of(&self, ky: usize, kx: usize) -> (usize, isize) {
        let (qy, qx) = (ky as isize - self.padding as isize, kx as isize - self.padding as isize);
        let phase = qy.rem_euclid(2) as usize * 2 + qx.rem_euclid(2) as usize;
        (phase, qy.div_euclid(2) * self.out_width as isize + qx.div_euclid(2))
    }

    /// Where the im2col rows of kernel offset (ky, kx) read the phases; `None` where all their pixels lie in the
    /// padding.
    fn phase_row(&self, ky: usize, kx: usize) -> Option<PhaseRow> {
        let (lines, columns, _, _) = self.reach(ky, kx)?;
        let width = self.out_width;
        let (phase, shift) = self.phase_of(ky, kx);
        let span = lines.start * width + columns.start..(lines.end - 1) * width + columns.end;
        // the positions between lines inside the span whose pixels lie in the padding, if any
        let keep = (columns.len() < width).then(|| {
            let kept = |position: usize| columns.contains(&(position % width));
            (0..self.positions()).map(|position| if kept(position) { u32::MAX } else { 0 }).collect()
        });
        Some(PhaseRow { phase, shift, span, keep })
    }

    /// Each im2col row of `rows` (the geometry's [`PhaseRows`]) with, where it reads the image, the index of the
    /// phase plane it reads among the `[channels, 2, 2]` planes and where it reads it. The rows of one kernel offset
    /// read the same way in every channel: worked out once per geometry and thread, where working them out row by
    /// row (divisions by the kernel and stride) was most of a row's cost.
    ///
    /// The callers run their rows' work in the body of a plain loop over this iterator, not in a closure: a kernel
    /// compiled for each SIMD level shares one copy of each closure it makes between the levels, and a large one
    /// is not inlined into them, so it compiles to x86-64's baseline SSE (the rows' copies and additions did).
    #[inline(always)]
    fn phase_rows<'r>(
        &self,
        rows: &'r [Option<PhaseRow>],
    ) -> impl Iterator<Item = (usize, Option<(usize, &'r PhaseRow)>)> + 'r {
        (0..self.channels).flat_map(move |channel| {
            rows.iter().enumerate().map(move |(offset, phase_row)| {
                let read = phase_row.as_ref().map(|phase_row| (channel * 4 + phase_row.phase, phase_row));
                (channel * rows.len() + offset, read)
            })
        })
    }

    /// Each image line: the index of its first pixel in the image and where its even pixels lie in the phases
    /// (`[channels, 2, 2, out_height, out_width]`); its odd pixels lie one phase plane further.
    #[inline(always)]
    fn lines(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let phase_len = self.phase_len();
        (0..self.channels).flat_map(move |channel| {
            (0..self.height).map(move |y| {
                let evens = (channel * 2 + y % 2) * 2 * phase_len + y / 2 * self.out_width;
                ((channel * self.height + y) * self.width, evens)
            })
        })
    }

    /// `phases` of `image`: P_ab[y][x] = image[2 y + a][2 x + b] for each channel, each line split in one pass.
    #[inline(always)]
    fn split(&self, image: &[f32], phases: &mut [f32]) {
        let (half, phase_len) = (self.out_width, self.phase_len());
        for (pixel, evens) in self.lines() {
            let (even_plane, odd_plane) = phases[evens..].split_at_mut(phase_len);
            deinterleave(&image[pixel..][..2 * half], &mut even_plane[..half], &mut odd_plane[..half]);
        }
    }

    /// The inverse of [`Self::split`]: every pixel of `image` written from its phase (its old values not read).
    #[inline(always)]
    fn merge(&self, phases: &[f32], image: &mut [f32]) {
        let (half, phase_len) = (self.out_width, self.phase_len());
        for (pixel, evens) in self.lines() {
            let (even, odd) = (&phases[evens..][..half], &phases[evens + phase_len..][..half]);
            interleave(even, odd, &mut image[pixel..][..2 * half]);
        }
    }

    /// im2col through the phases, rows [`Self::column_stride`] apart ([`Self::splits_into_phases`] must hold).
    #[inline(always)]
    pub(super) fn unfold_by_phases(&self, image: &[f32], cols: &mut [f32]) {
        let (positions, phase_len, stride) = (self.positions(), self.phase_len(), self.column_stride());
        let mut buffer = take_scratch(&PHASES, image.len());
        let phases = &mut buffer[..image.len()];
        // every value written: each pixel lies in one phase
        self.split(image, phases);
        let rows = PhaseRows::of(self);
        for (row, read) in self.phase_rows(&rows) {
            let row_cols = &mut cols[row * stride..][..positions];
            let Some((plane, PhaseRow { shift, span, keep, .. })) = read else {
                row_cols.fill(0.0);
                continue;
            };
            let plane = &phases[plane * phase_len..][..phase_len];
            let source = &plane[(span.start as isize + shift) as usize..][..span.len()];
            row_cols[..span.start].fill(0.0);
            row_cols[span.end..].fill(0.0);
            let inside = &mut row_cols[span.clone()];
            match keep {
                None => inside.copy_from_slice(source),
                Some(keep) => {
                    let kept = inside.iter_mut().zip(source).zip(&keep[span.clone()]);
                    kept.for_each(|((value, &pixel), &mask)| *value = f32::from_bits(pixel.to_bits() & mask));
                }
            }
        }
        put_scratch(&PHASES, buffer);
    }

    /// col2im through the phases, written into `image` (its old values not read) ([`Self::splits_into_phases`]
    /// must hold).
    #[inline(always)]
    pub(super) fn fold_by_phases(&self, cols: &[f32], image: &mut [f32]) {
        let (positions, phase_len) = (self.positions(), self.phase_len());
        let mut buffer = take_scratch(&PHASES, image.len());
        let phases = &mut buffer[..image.len()];
        phases.fill(0.0);
        let rows = PhaseRows::of(self);
        for (row, read) in self.phase_rows(&rows) {
            let Some((plane, PhaseRow { shift, span, keep, .. })) = read else { continue };
            let row_cols = &cols[row * positions..][..positions];
            let plane = &mut phases[plane * phase_len..][..phase_len];
            let target = &mut plane[(span.start as isize + shift) as usize..][..span.len()];
            let sums = target.iter_mut().zip(&row_cols[span.clone()]);
            match keep {
                None => sums.for_each(|(value, &addend)| *value += addend),
                // a value in the padding adds +0.0: the sum the line-by-line form leaves by skipping it
                Some(keep) => sums
                    .zip(&keep[span.clone()])
                    .for_each(|((value, &addend), &mask)| *value += f32::from_bits(addend.to_bits() & mask)),
            }
        }
        self.merge(phases, image);
        put_scratch(&PHASES, buffer);
    }
}

thread_local! {
    /// This thread's buffer for one image's phases.
    static PHASES: Scratch = const { std::cell::Cell::new(Vec::new()) };
}

/// evens[i] = line[2 i] and odds[i] = line[2 i + 1]; `line` holds twice as many values as each half. Inlined into
/// the callers compiled for the SIMD level in use, where the compiler turns the pairs into vector shuffles.
#[inline(always)]
fn deinterleave(line: &[f32], evens: &mut [f32], odds: &mut [f32]) {
    let pairs = line.chunks_exact(2).zip(evens.iter_mut().zip(odds.iter_mut()));
    pairs.for_each(|(pair, (even, odd))| (*even, *odd) = (pair[0], pair[1]));
}

/// The inverse of [`deinterleave`]: line[2 i] = evens[i] and line[2 i + 1] = odds[i].
#[inline(always)]
fn interleave(evens: &[f32], odds: &[f32], line: &mut [f32]) {
    let pairs = line.chunks_exact_mut(2).zip(evens.iter().zip(odds));
    pairs.for_each(|(pair, (&even, &odd))| (pair[0], pair[1]) = (even, odd));
}

/// Where the im2col rows of one kernel offset read the phases: the phase plane among a channel's four, the shift
/// from an output position to its pixel in that plane, the span of output positions from the first inside the
/// image to one past the last, and, where some positions inside the span lie in the padding (the first or last
/// column of each line), bit masks over the row's positions that keep the others (all bits set) and zero those.
struct PhaseRow {
    phase: usize,
    shift: isize,
    span: std::ops::Range<usize>,
    keep: Option<Vec<u32>>,
}

/// A geometry's [`PhaseRow`]s, one per kernel offset (ky k + kx); `None` for an offset that reads only padding.
struct PhaseRows {
    geometry: ConvGeometry,
    rows: std::rc::Rc<[Option<PhaseRow>]>,
}

/// Geometries whose rows a thread keeps: a model's stride-2 layers, each run over a whole batch at a time.
const KEPT_GEOMETRIES: usize = 8;

thread_local! {
    /// The rows of the geometries this thread ran last, the latest last.
    static ROWS: std::cell::RefCell<Vec<PhaseRows>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl PhaseRows {
    /// `geometry`'s rows, worked out on the first call on this thread and kept.
    fn of(geometry: &ConvGeometry) -> std::rc::Rc<[Option<PhaseRow>]> {
        ROWS.with(|kept| {
            let mut kept = kept.borrow_mut();
            if let Some(found) = kept.iter().find(|entry| entry.geometry == *geometry) {
                return found.rows.clone();
            }
            let k = geometry.kernel;
            let rows: std::rc::Rc<[_]> = (0..k * k).map(|offset| geometry.phase_row(offset / k, offset % k)).collect();
            if kept.len() == KEPT_GEOMETRIES {
                kept.remove(0);
            }
            kept.push(PhaseRows { geometry: *geometry, rows: rows.clone() });
            rows
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ConvGeometry;

    /// im2col and col2im through the phases give what the line-by-line forms give, bit for bit, on every
    /// geometry the phases take (4 x 4 padding 1, 3 x 3 padding 1, 2 x 2 padding 0; square and not).
    #[test]
    fn the_phases_match_the_line_by_line_forms() {
        let value = |i: usize| ((i * 7919) % 997) as f32 / 100.0 - 5.0;
        for (channels, sides, kernel, padding) in
            [(2, (8, 8), 4, 1), (3, (6, 10), 3, 1), (1, (4, 2), 2, 0), (2, (2, 4), 4, 1)]
        {
            let geometry = ConvGeometry::new(channels, sides, kernel, 2, padding).unwrap();
            assert!(geometry.splits_into_phases(), "{geometry:?}");
            let image: Vec<f32> = (0..geometry.image_len()).map(value).collect();
            let cols_len = geometry.columns_len();
            let (mut by_lines, mut by_phases) = (vec![f32::NAN; cols_len], vec![f32::NAN; cols_len]);
            geometry.unfold(&image, &mut by_lines);
            geometry.unfold_by_phases(&image, &mut by_phases);
            assert_eq!(by_lines, by_phases, "im2col, {geometry:?}");

            let cols: Vec<f32> = (0..geometry.patch_len() * geometry.positions()).map(|i| value(i + 13)).collect();
            // both write every value
            let (mut by_lines, mut by_phases) = (vec![f32::NAN; image.len()], vec![f32::NAN; image.len()]);
            geometry.fold(&cols, &mut by_lines);
            geometry.fold_by_phases(&cols, &mut by_phases);
            assert_eq!(by_lines, by_phases, "col2im, {geometry:?}");
        }
    }
}
