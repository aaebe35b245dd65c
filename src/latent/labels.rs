//! Which labels to use for the latent-space tools that need classes (attribute vectors, linear probes): the data's
//! class labels, or one of its ground-truth factors (the sprites' shape, scale, rotation, x or y).

use crate::data::sprites::{FACTOR_NAMES, SHAPE_NAMES};
use crate::data::Dataset;
use crate::{Error, Result};

/// Where the class of each example comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LabelChoice {
    /// The data's class labels (for the sprites: the shape).
    #[default]
    Labels,
    /// The ground-truth factor of this name.
    Factor(String),
}

impl LabelChoice {
    /// The factor `name`, or the labels when `None`.
    pub fn from_factor(name: Option<&str>) -> Self {
        name.map_or(LabelChoice::Labels, |n| LabelChoice::Factor(n.to_string()))
    }

    /// A description for messages: "labels" or "factor x".
    pub fn describe(&self) -> String {
        match self {
            LabelChoice::Labels => "labels".into(),
            LabelChoice::Factor(name) => format!("factor {name}"),
        }
    }
}

/// The class of every example of `dataset`; an error says what the data has when the choice is not there.
pub fn labels_of(dataset: &Dataset, choice: &LabelChoice) -> Result<Vec<u32>> {
    match choice {
        LabelChoice::Labels => dataset.labels.clone().ok_or_else(|| {
            let problem = "the data has no class labels (IDX and NPY directories need their label files, CSV files \
                           --label-column)";
            Error::bad_input(&dataset.source, "labels", problem)
        }),
        LabelChoice::Factor(name) => {
            let factors = dataset.factors.as_ref().ok_or_else(|| {
                Error::bad_input(
                    &dataset.source,
                    "factors",
                    "the data has no ground-truth factors (only the sprites do)",
                )
            })?;
            let column = factors.names.iter().position(|n| n == name).ok_or_else(|| {
                let problem = format!("no factor `{name}`; the data has {}", factors.names.join(", "));
                Error::invalid_setting("factor", problem)
            })?;
            Ok(factors.indices.iter().skip(column).step_by(factors.names.len()).copied().collect())
        }
    }
}

/// A readable name for class `value`: the data's class name (an image folder's class folder, the sprites' shape)
/// for its labels, the shape's name for the sprites' shape factor, otherwise the number.
pub fn label_name(dataset: &Dataset, choice: &LabelChoice, value: u32) -> String {
    let sprites = dataset.factors.as_ref().is_some_and(|f| f.names.iter().eq(FACTOR_NAMES.iter()));
    let name = match choice {
        LabelChoice::Labels => dataset.class_names.as_ref().and_then(|names| names.get(value as usize)).cloned(),
        LabelChoice::Factor(factor) if sprites && factor == FACTOR_NAMES[0] => {
            SHAPE_NAMES.get(value as usize).map(|name| name.to_string())
        }
        LabelChoice::Factor(_) => None,
    };
    name.unwrap_or_else(|| value.to_string())
}

/// The class written as `text`: a number, or a name [`label_name`] gives (such as `heart`). An error lists the
/// classes `labels` holds when `text` is neither.
pub fn parse_label(dataset: &Dataset, choice: &LabelChoice, labels: &[u32], text: &str) -> Result<u32> {
    let classes = class_count(labels) as u32;
    let named = (0..classes).find(|&c| label_name(dataset, choice, c).eq_ignore_ascii_case(text.trim()));
    named.or_else(|| text.trim().parse().ok()).ok_or_else(|| {
        let known: Vec<String> = (0..classes).map(|c| label_name(dataset, choice, c)).collect();
        let problem = format!("`{text}` is not one of the classes of the {}: {}", choice.describe(), known.join(", "));
        Error::invalid_setting("label", problem)
    })
}

/// The number of classes: one more than the largest label (0 for no labels).
pub fn class_count(labels: &[u32]) -> usize {
    labels.iter().max().map_or(0, |&m| m as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sprites::{generate, SpriteConfig};

    #[test]
    fn sprite_labels_are_shapes_and_factors_are_columns() {
        let data = generate(&SpriteConfig { size: 16, count: 20, seed: 2, full_grid: false }).unwrap();
        let shapes = labels_of(&data, &LabelChoice::Labels).unwrap();
        assert_eq!(shapes, labels_of(&data, &LabelChoice::from_factor(Some("shape"))).unwrap());
        let x = labels_of(&data, &LabelChoice::from_factor(Some("x"))).unwrap();
        let factors = data.factors.as_ref().unwrap();
        assert_eq!(x[3], factors.indices[3 * 5 + 3]);
        assert_eq!(label_name(&data, &LabelChoice::Labels, 2), "heart");
        assert_eq!(label_name(&data, &LabelChoice::from_factor(Some("x")), 2), "2");
        assert_eq!(parse_label(&data, &LabelChoice::Labels, &shapes, "Heart").unwrap(), 2);
        assert_eq!(parse_label(&data, &LabelChoice::Labels, &shapes, "1").unwrap(), 1);
        let message = parse_label(&data, &LabelChoice::Labels, &shapes, "star").unwrap_err().to_string();
        assert!(message.contains("star") && message.contains("square, ellipse, heart"), "{message}");
    }

    #[test]
    fn class_names_of_the_data_name_its_labels() {
        let mut data = generate(&SpriteConfig { size: 16, count: 6, seed: 2, full_grid: false }).unwrap();
        data.factors = None;
        data.labels = Some(vec![0, 1, 2, 1, 0, 2]);
        data.class_names = Some(vec!["cat".into(), "dog".into(), "eel".into()]);
        let labels = data.labels.clone().unwrap();
        assert_eq!(parse_label(&data, &LabelChoice::Labels, &labels, "Dog").unwrap(), 1);
        assert_eq!(label_name(&data, &LabelChoice::Labels, 2), "eel");
        data.class_names = None;
        assert_eq!(label_name(&data, &LabelChoice::Labels, 2), "2");
    }

    #[test]
    fn missing_labels_and_factors_are_clear_errors() {
        let mut data = generate(&SpriteConfig { size: 16, count: 4, seed: 2, full_grid: false }).unwrap();
        let message = labels_of(&data, &LabelChoice::from_factor(Some("colour"))).unwrap_err().to_string();
        assert!(message.contains("colour") && message.contains("shape, scale"), "{message}");
        data.labels = None;
        data.factors = None;
        let message = labels_of(&data, &LabelChoice::Labels).unwrap_err().to_string();
        assert!(message.contains("sprites(") && message.contains("no class labels"), "{message}");
        assert!(labels_of(&data, &LabelChoice::from_factor(Some("x"))).unwrap_err().to_string().contains("factors"));
    }
}
