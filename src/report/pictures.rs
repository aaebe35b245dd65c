//! The pictures section: prior samples and reconstructions (the run's PNGs), a latent traversal and two
//! interpolations (made from the model), all inlined as PNG data.

use std::path::Path;

use candle_core::Device;
use image::RgbImage;

use super::html::{display_scale, image_figure, note, section};
use crate::data::Dataset;
use crate::latent::interpolate::interpolate;
use crate::latent::pictures::{interpolation_grid, traversal_grid};
use crate::latent::traverse::{order_by_kl, traverse_encodings, Dimensions, TraversalSettings};
use crate::latent::Encodings;
use crate::model::Vae;
use crate::outputs::grid::display_shape;
use crate::outputs::{RunDir, RunFile};
use crate::{Error, Result};

/// At most this many dimensions (the highest-KL ones) are traversed in the report.
const TRAVERSED: usize = 10;

/// The section. `held_out` is the data the traversal and interpolations start from, `encodings` its codes.
pub fn pictures_section(
    run: &RunDir,
    vae: &Vae,
    held_out: &Dataset,
    encodings: &Encodings,
    device: &Device,
) -> Result<String> {
    let scale = display_scale(display_shape(&held_out.shape).height as u32);
    let mut body = String::new();
    let samples = "Samples: decoded draws z ~ N(0, I) from the prior.";
    body.push_str(&saved_picture(&run.path(RunFile::Samples), scale, samples)?);
    let reconstructions =
        "Reconstructions: held-out inputs (odd rows) above their reconstructions from z = mu (even rows).";
    body.push_str(&saved_picture(&run.path(RunFile::Reconstructions), scale, reconstructions)?);
    body.push_str(&traversal_html(vae, held_out, encodings, scale, device)?);
    body.push_str(&interpolation_html(vae, held_out, scale, device)?);
    Ok(section("pictures", "Samples, reconstructions, traversal, interpolation", &body))
}

/// A PNG of the run directory as a figure, or a note when it is missing.
fn saved_picture(path: &Path, scale: u32, caption: &str) -> Result<String> {
    if !path.is_file() {
        return Ok(note(&format!("{caption} Not available: {} is missing.", path.display())));
    }
    let image = image::open(path).map_err(|e| Error::bad_input(path, "image", e.to_string()))?.to_rgb8();
    figure(&image, scale, caption)
}

fn traversal_html(vae: &Vae, held_out: &Dataset, encodings: &Encodings, scale: u32, device: &Device) -> Result<String> {
    let kl = encodings.mean_kl_per_dimension()?;
    let all: Vec<usize> = (0..kl.len()).collect();
    let top: Vec<usize> = order_by_kl(&all, &kl).iter().take(TRAVERSED).map(|r| r.dimension).collect();
    let settings = TraversalSettings { dimensions: Dimensions::List(top.clone()), ..TraversalSettings::default() };
    let traversal = traverse_encodings(vae, encodings, &settings, device)?;
    let which = if top.len() < kl.len() {
        format!("the {} dimensions with the highest KL", top.len())
    } else {
        "every dimension".into()
    };
    let caption = format!(
        "Traversal: held-out example 0 with one latent dimension swept from -{r} to {r} in {s} steps and the others \
         fixed at its mu; one row for {which}, highest KL first.",
        r = settings.range,
        s = settings.steps
    );
    figure(&traversal_grid(&traversal, &held_out.shape)?, scale, &caption)
}

fn interpolation_html(vae: &Vae, held_out: &Dataset, scale: u32, device: &Device) -> Result<String> {
    if held_out.len() < 2 {
        return Ok(note("Interpolation: not available (the held-out set has fewer than two examples)."));
    }
    let mut html = String::from("<div class=\"stack\">\n");
    for spherical in [false, true] {
        let path = interpolate(vae, held_out, (0, 1), 10, spherical, device)?;
        let kind = if spherical { "spherical (slerp)" } else { "linear" };
        let caption = format!(
            "Interpolation, {kind}: held-out examples 0 and 1 at the ends, and 10 points decoded from the path between \
             their codes mu."
        );
        html.push_str(&figure(&interpolation_grid(&path, &held_out.shape, spherical)?, scale, &caption)?);
    }
    Ok(html + "</div>\n")
}

fn figure(image: &RgbImage, scale: u32, caption: &str) -> Result<String> {
    image_figure(image, scale, caption).map_err(|e| Error::io("report.html", e))
}
