//! Tiled encoding and decoding as diffusers' `enable_tiling` does it: overlapping tiles, each run alone, blended
//! linearly into their neighbours above and to the left, then cropped and joined.
//!
//! A tile of `input_tile` pixels (or latent positions) gives `output_tile` outputs. Tiles start every
//! int(input_tile * (1 - 0.25)) inputs; the first int(output_tile * 0.25) outputs of a tile are blended with the
//! last ones of the tile before it, out = a * (1 - t / e) + b * (t / e) for t = 0 .. e - 1, and each tile keeps its
//! first output_tile - e outputs. Tiles are processed one row at a time, keeping only the row above, so the
//! network's activations are bounded by the tile size, not the image size.

use candle_core::Tensor;

use crate::{Error, Result};

/// diffusers' `tile_overlap_factor`.
pub const TILE_OVERLAP_FACTOR: f64 = 0.25;

/// The tile sides of one direction (encoding: image tile to latent tile; decoding: latent tile to image tile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiles {
    /// Side of an input tile.
    pub input_tile: usize,
    /// Side of the output of one input tile.
    pub output_tile: usize,
}

impl Tiles {
    /// Inputs between the starts of neighbouring tiles: int(input_tile * (1 - overlap)).
    pub fn stride(&self) -> usize {
        (self.input_tile as f64 * (1.0 - TILE_OVERLAP_FACTOR)) as usize
    }

    /// Outputs blended between neighbours: int(output_tile * overlap).
    pub fn blend_extent(&self) -> usize {
        (self.output_tile as f64 * TILE_OVERLAP_FACTOR) as usize
    }

    /// Outputs kept of each tile: output_tile - blend_extent.
    pub fn row_limit(&self) -> usize {
        self.output_tile - self.blend_extent()
    }

    /// True when `[.., H, W]` input is larger than a tile on either side (diffusers tiles exactly then).
    pub fn needed(&self, x: &Tensor) -> Result<bool> {
        let (_, _, height, width) = x.dims4()?;
        Ok(height > self.input_tile || width > self.input_tile)
    }

    /// An error unless tiles start at least one input apart and keep at least one output.
    fn check(&self) -> Result<()> {
        if self.stride() == 0 || self.row_limit() == 0 {
            let problem = format!(
                "tiles of {} inputs and {} outputs cannot overlap by {TILE_OVERLAP_FACTOR}: the config's sample_size \
                 is too small for tiling",
                self.input_tile, self.output_tile
            );
            return Err(Error::invalid_setting("sample_size", problem));
        }
        Ok(())
    }

    /// `network` applied to `[batch, C, H, W]` input tile by tile, blended and joined.
    pub fn apply(&self, x: &Tensor, network: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        self.check()?;
        let (_, _, height, width) = x.dims4()?;
        let (stride, extent, limit) = (self.stride(), self.blend_extent(), self.row_limit());
        let mut above: Vec<Tensor> = Vec::new();
        let mut joined_rows = Vec::new();
        for top in (0..height).step_by(stride) {
            let mut row: Vec<Tensor> = Vec::new();
            for (column, left) in (0..width).step_by(stride).enumerate() {
                let tile = x.narrow(2, top, self.input_tile.min(height - top))?;
                let tile = tile.narrow(3, left, self.input_tile.min(width - left))?;
                let mut out = network(&tile.contiguous()?)?.contiguous()?;
                if let Some(upper) = above.get(column) {
                    out = blend(upper, &out, extent, 2)?;
                }
                if let Some(previous) = row.last() {
                    out = blend(previous, &out, extent, 3)?;
                }
                row.push(out);
            }
            let cropped = row.iter().map(|tile| crop(tile, limit)).collect::<Result<Vec<_>>>()?;
            joined_rows.push(Tensor::cat(&cropped, 3)?);
            above = row;
        }
        Ok(Tensor::cat(&joined_rows, 2)?)
    }
}

/// The first `limit` outputs of `tile` down and across (fewer where the tile is smaller), contiguous: candle 0.11's
/// `cat` can index past a strided view's storage.
fn crop(tile: &Tensor, limit: usize) -> Result<Tensor> {
    let (_, _, height, width) = tile.dims4()?;
    Ok(tile.narrow(2, 0, limit.min(height))?.narrow(3, 0, limit.min(width))?.contiguous()?)
}

/// `b` with its first e entries along `axis` (2: down, 3: across) blended from the last e of `a`:
/// b[t] = a[n - e + t] * (1 - t / e) + b[t] * (t / e), e = min(extent, a's side, b's side).
fn blend(a: &Tensor, b: &Tensor, extent: usize, axis: usize) -> Result<Tensor> {
    let extent = extent.min(a.dim(axis)?).min(b.dim(axis)?);
    if extent == 0 {
        return Ok(b.clone());
    }
    let ramp: Vec<f32> = (0..extent).map(|t| t as f32 / extent as f32).collect();
    let mut ramp_shape = [1usize; 4];
    ramp_shape[axis] = extent;
    let weight = Tensor::from_vec(ramp, &ramp_shape[..], b.device())?.to_dtype(b.dtype())?;
    let tail = a.narrow(axis, a.dim(axis)? - extent, extent)?;
    let head = b.narrow(axis, 0, extent)?;
    // a * (1 - w) + b * w
    let mixed = (tail.broadcast_mul(&weight.affine(-1.0, 1.0)?)? + head.broadcast_mul(&weight)?)?;
    if extent == b.dim(axis)? {
        return Ok(mixed); // candle 0.11's `cat` mis-indexes an empty part
    }
    let rest = b.narrow(axis, extent, b.dim(axis)? - extent)?;
    Ok(Tensor::cat(&[&mixed, &rest], axis)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn an_identity_network_comes_back_unchanged_where_tiles_agree() {
        // an identity network gives every tile the same values where tiles overlap, so blending changes nothing
        let x = Tensor::arange(0f32, 100.0, &Device::Cpu).unwrap().reshape((1, 1, 10, 10)).unwrap();
        let tiles = Tiles { input_tile: 4, output_tile: 4 };
        let y = tiles.apply(&x, |t| Ok(t.clone())).unwrap();
        assert_eq!(y.dims(), &[1, 1, 10, 10]);
        let difference = (y - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(difference, 0.0);
    }
}
