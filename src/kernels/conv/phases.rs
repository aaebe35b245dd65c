//! Stride-2 im2col and col2im through the image's four phases.
//!
//! With stride 2, kernel offset (ky, kx) reads pixel (2 oy + ky - padding, 2 ox + kx - padding) at output position
//! (oy, ox): always the same phase of the image (row parity a, column parity b), shifted by a fixed amount. So once
//! the image is split into its four phase planes, P_ab[y][x] = image[2 y + a][2 x + b], an im2col row is that
//! plane shifted: cols[oy][ox] = P_ab[oy + sy][ox + sx]. Where the output is half the image in each direction
//! (kernel - 2 padding is 1 or 2: the 4 x 4, padding 1 convolutions of the disentanglement architecture), a phase
//! plane's rows are as long as the output's, so a whole im2col row is one contiguous copy of its plane (col2im one
//! contiguous addition), with the few columns that fall in the padding set apart afterwards. The strided copies of
//! [`super::ConvGeometry::unfold`] did the same work a line of 4-32 values at a time, their per-line work a third
//! of a conv model's training step.

use super::{with_scratch, ConvGeometry, Scratch};

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

    /// The phase plane kernel offset (ky, kx) of `channel` reads (its index among the `[channels, 2, 2]` planes),
    /// and the shift sy * width + sx from an output position to its pixel in that plane.
    fn phase_of(&self, channel: usize, ky: usize, kx: usize) -> (usize, isize) {
        let (qy, qx) = (ky as isize - self.padding as isize, kx as isize - self.padding as isize);
        let plane = (channel * 2 + qy.rem_euclid(2) as usize) * 2 + qx.rem_euclid(2) as usize;
        (plane, qy.div_euclid(2) * self.out_width as isize + qx.div_euclid(2))
    }

    /// Calls `visit(row, phase_row)` for each im2col row, with where it reads the phases; `None` for a row whose
    /// pixels all lie in the padding.
    #[inline(always)]
    fn for_each_phase_row(&self, mut visit: impl FnMut(usize, Option<PhaseRow>)) {
        for (row, channel, ky, kx) in self.rows() {
            let phase_row = self.reach(ky, kx).map(|(lines, columns, _, _)| {
                let width = self.out_width;
                let (plane, shift) = self.phase_of(channel, ky, kx);
                let span = lines.start * width + columns.start..(lines.end - 1) * width + columns.end;
                PhaseRow { plane, shift, span, padding: RowPadding { lines, columns, width } }
            });
            visit(row, phase_row);
        }
    }

    /// Calls `visit(pixel, evens)` for each image line: the index of its first pixel in the image and where its
    /// even pixels lie in the phases (`[channels, 2, 2, out_height, out_width]`); its odd pixels lie one phase
    /// plane further.
    fn for_each_line(&self, mut visit: impl FnMut(usize, usize)) {
        let phase_len = self.phase_len();
        for channel in 0..self.channels {
            for y in 0..self.height {
                let evens = (channel * 2 + y % 2) * 2 * phase_len + y / 2 * self.out_width;
                visit((channel * self.height + y) * self.width, evens);
            }
        }
    }

    /// `phases` of `image`: P_ab[y][x] = image[2 y + a][2 x + b] for each channel, each line split in one pass.
    fn split(&self, image: &[f32], phases: &mut [f32]) {
        let (half, phase_len) = (self.out_width, self.phase_len());
        self.for_each_line(|pixel, evens| {
            let (even_plane, odd_plane) = phases[evens..].split_at_mut(phase_len);
            deinterleave(&image[pixel..][..2 * half], &mut even_plane[..half], &mut odd_plane[..half]);
        });
    }

    /// The inverse of [`Self::split`]: every pixel of `image` written from its phase (its old values not read).
    fn merge(&self, phases: &[f32], image: &mut [f32]) {
        let (half, phase_len) = (self.out_width, self.phase_len());
        self.for_each_line(|pixel, evens| {
            let (even, odd) = (&phases[evens..][..half], &phases[evens + phase_len..][..half]);
            interleave(even, odd, &mut image[pixel..][..2 * half]);
        });
    }

    /// im2col through the phases, rows [`Self::column_stride`] apart ([`Self::splits_into_phases`] must hold).
    #[inline(always)]
    pub(super) fn unfold_by_phases(&self, image: &[f32], cols: &mut [f32]) {
        with_scratch(&PHASES, image.len(), |phases| self.unfold_phases(image, phases, cols))
    }

    /// [`Self::unfold_by_phases`] with a buffer for the phases.
    #[inline(always)]
    fn unfold_phases(&self, image: &[f32], phases: &mut [f32], cols: &mut [f32]) {
        let (positions, phase_len) = (self.positions(), self.phase_len());
        // every value written: each pixel lies in one phase
        self.split(image, phases);
        self.for_each_phase_row(|row, phase_row| {
            let row_cols = &mut cols[row * self.column_stride()..][..positions];
            let Some(PhaseRow { plane, shift, span, padding }) = phase_row else {
                row_cols.fill(0.0);
                return;
            };
            let plane = &phases[plane * phase_len..][..phase_len];
            let source = (span.start as isize + shift) as usize;
            row_cols[..span.start].fill(0.0);
            row_cols[span.end..].fill(0.0);
            row_cols[span.clone()].copy_from_slice(&plane[source..][..span.len()]);
            padding.clear(row_cols);
        });
    }

    /// col2im through the phases, written into `image` (its old values not read); the values of `cols` in the
    /// padding are zeroed on the way ([`Self::splits_into_phases`] must hold).
    #[inline(always)]
    pub(super) fn fold_by_phases(&self, cols: &mut [f32], image: &mut [f32]) {
        with_scratch(&PHASES, image.len(), |phases| self.fold_phases(cols, phases, image))
    }

    /// [`Self::fold_by_phases`] with a buffer for the phases.
    #[inline(always)]
    fn fold_phases(&self, cols: &mut [f32], phases: &mut [f32], image: &mut [f32]) {
        let (positions, phase_len) = (self.positions(), self.phase_len());
        phases.fill(0.0);
        self.for_each_phase_row(|row, phase_row| {
            let Some(PhaseRow { plane, shift, span, padding }) = phase_row else { return };
            let row_cols = &mut cols[row * positions..][..positions];
            padding.clear(row_cols);
            let plane = &mut phases[plane * phase_len..][..phase_len];
            let target = (span.start as isize + shift) as usize;
            let sums = plane[target..][..span.len()].iter_mut().zip(&row_cols[span]);
            sums.for_each(|(value, &addend)| *value += addend);
        });
        self.merge(phases, image);
    }
}

thread_local! {
    /// This thread's buffer for one image's phases.
    static PHASES: Scratch = const { std::cell::RefCell::new(Vec::new()) };
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

/// Where an im2col row reads the phases: its phase plane (index among the `[channels, 2, 2]` planes), the shift
/// from an output position to its pixel in that plane, the span of output positions from the first inside the
/// image to one past the last, and the positions of that span that lie in the padding.
struct PhaseRow {
    plane: usize,
    shift: isize,
    span: std::ops::Range<usize>,
    padding: RowPadding,
}

/// The output positions of an im2col row whose pixel lies in the padding, inside the row's span: the columns
/// outside `columns` between one line inside the image and the next.
struct RowPadding {
    lines: std::ops::Range<usize>,
    columns: std::ops::Range<usize>,
    width: usize,
}

impl RowPadding {
    /// Zeroes those positions of `row_cols`.
    fn clear(&self, row_cols: &mut [f32]) {
        if self.columns.len() == self.width {
            return;
        }
        let gap = self.width - self.columns.len();
        for line in self.lines.start..self.lines.end - 1 {
            let zeros = &mut row_cols[line * self.width + self.columns.end..][..gap];
            // one or two values a line as plain stores, where fill calls memset for each line
            match zeros {
                [only] => *only = 0.0,
                [first, second] => (*first, *second) = (0.0, 0.0),
                _ => zeros.fill(0.0),
            }
        }
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
            geometry.fold_by_phases(&mut cols.clone(), &mut by_phases);
            assert_eq!(by_lines, by_phases, "col2im, {geometry:?}");
        }
    }
}
