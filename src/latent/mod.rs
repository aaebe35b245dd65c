//! Using the latent space of a trained VAE: encode data to codes and decode codes back (the decoder as a
//! decompressor), interpolate between examples, traverse single dimensions, move codes by attribute vectors, and
//! measure the representation with a linear probe.

pub mod arithmetic;
pub mod autoencoder_kl;
pub mod codes;
pub mod decode;
pub mod encode;
pub mod interpolate;
pub mod labels;
pub mod pictures;
pub mod probe;
pub mod trained;
pub mod traverse;

pub use encode::{encode_dataset, Encodings};
pub use labels::LabelChoice;
pub use trained::{Split, TrainedRun};
