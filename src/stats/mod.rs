//! Statistics several stages share: a multinomial logistic regression (the linear probe of the latent space, the
//! beta-VAE score and DCI's importances) and discrete entropy and mutual-information estimates (MIG).

pub mod information;
pub mod logistic;
