//! Runs made from a stored one: which flags `--resume` takes, and how the flags given with `--config` change the
//! fields of the file's configuration.

use std::path::Path;

use clap::parser::ValueSource;
use clap::ArgMatches;
use elbo::data::DataSpec;
use elbo::outputs::RunConfig;

use super::TrainArgs;

/// The flags given on the command line (by clap id, e.g. `max_steps`); flags left at their defaults are not given.
pub fn given_flags(matches: &ArgMatches) -> Vec<String> {
    matches
        .ids()
        .map(|id| id.as_str().to_string())
        .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
        .collect()
}

/// The flags `--resume` takes: none changes the model, the data or a step already taken.
const RESUME_FLAGS: [&str; 5] = ["resume", "epochs", "max_steps", "checkpoint_every", "quiet"];

/// An error naming the first given flag that `--resume` does not take.
pub fn check_resume_flags(given: &[String]) -> anyhow::Result<()> {
    match given.iter().find(|id| !RESUME_FLAGS.contains(&id.as_str())) {
        Some(id) => anyhow::bail!(
            "--{} cannot be given with --resume: a resumed run keeps the settings of its config.json \
             (--resume takes --epochs, --max-steps, --checkpoint-every and --quiet)",
            flag(id)
        ),
        None => Ok(()),
    }
}

/// The command-line spelling of a clap id.
fn flag(id: &str) -> String {
    id.replace('_', "-")
}

/// What a flag given with `--config` does.
enum Change {
    /// Sets a field of the configuration.
    Set(fn(&TrainArgs, &mut RunConfig)),
    /// Is refused: its effect depends on other settings, so the named field is edited in the file instead.
    EditField(&'static str),
    /// Is about this invocation, not the run's settings (the output directory, the display).
    Invocation,
    /// Sets up a KL autoencoder (`--architecture autoencoder-kl`), which `--config` does not repeat.
    Autoencoder,
}

/// Every flag of `elbo train` but `--resume`, with what it does next to `--config`.
const CHANGES: &[(&str, Change)] = &[
    ("config", Change::Invocation),
    ("out", Change::Invocation),
    ("quiet", Change::Invocation),
    ("overwrite", Change::Invocation),
    ("epochs", Change::Set(|args, config| config.training.epochs = args.epochs)),
    ("max_steps", Change::Set(|args, config| config.training.max_steps = args.max_steps)),
    ("batch_size", Change::Set(|args, config| config.training.batch_size = args.batch_size)),
    ("lr", Change::Set(|args, config| config.training.learning_rate = args.lr)),
    ("seed", Change::Set(set_seed)),
    ("step", Change::Set(|args, config| config.training.step = args.step)),
    ("checkpoint_every", Change::Set(|args, config| config.training.checkpoint_every = args.checkpoint_every)),
    (
        "binarize",
        Change::Set(|args, config| config.training.binarization = args.binarize.to_binarization(args.threshold)),
    ),
    ("beta", Change::Set(|args, config| config.training.kl.beta = args.objective.beta())),
    ("free_bits", Change::Set(|args, config| config.training.kl.free_bits = args.objective.free_bits())),
    ("latent_dim", Change::Set(|args, config| config.model.latent_dim = args.model.latent_dim)),
    ("activation", Change::Set(|args, config| config.model.activation = args.model.activation)),
    ("device", Change::Set(|args, config| config.device = args.compute.device.to_string())),
    ("threads", Change::Set(|args, config| config.threads = args.compute.threads)),
    ("validation_fraction", Change::Set(|args, config| config.validation_fraction = args.data.validation_fraction)),
    ("threshold", Change::EditField("training.binarization")),
    ("optimizer", Change::EditField("training.optimizer")),
    ("momentum", Change::EditField("training.optimizer")),
    ("objective", Change::EditField("training.objective")),
    ("train_iw_samples", Change::EditField("training.objective")),
    ("tc_beta", Change::EditField("training.objective")),
    ("warmup_epochs", Change::EditField("training.kl.schedule")),
    ("warmup_steps", Change::EditField("training.kl.schedule")),
    ("kl_cycles", Change::EditField("training.kl.schedule")),
    ("cycle_ratio", Change::EditField("training.kl.schedule")),
    ("capacity_max", Change::EditField("training.kl.capacity")),
    ("capacity_epochs", Change::EditField("training.kl.capacity")),
    ("capacity_gamma", Change::EditField("training.kl.capacity")),
    ("likelihood", Change::EditField("model.likelihood")),
    ("gaussian_variance", Change::EditField("model.likelihood")),
    ("gaussian_sigma", Change::EditField("model.likelihood")),
    ("levels", Change::EditField("model.likelihood")),
    ("architecture", Change::EditField("model.conv")),
    ("conv_channels", Change::EditField("model.conv")),
    ("hidden", Change::EditField("model.encoder_hidden")),
    ("decoder_hidden", Change::EditField("model.decoder_hidden")),
    ("data", Change::EditField("data")),
    ("label_column", Change::EditField("data")),
    ("sprite_size", Change::EditField("data")),
    ("sprite_grid", Change::EditField("data")),
    ("sprite_count", Change::EditField("data")),
    ("image_size", Change::EditField("data")),
    ("image_channels", Change::EditField("data")),
    ("block_out_channels", Change::Autoencoder),
    ("layers_per_block", Change::Autoencoder),
    ("latent_channels", Change::Autoencoder),
    ("norm_groups", Change::Autoencoder),
    ("no_attention", Change::Autoencoder),
    ("random_crop", Change::Autoencoder),
    ("no_flip", Change::Autoencoder),
    ("held_out_photos", Change::Autoencoder),
    ("held_out_crops", Change::Autoencoder),
    ("eval_every", Change::Autoencoder),
    ("discriminator_start", Change::Autoencoder),
    ("discriminator_weight", Change::Autoencoder),
    ("discriminator_loss", Change::Autoencoder),
    ("discriminator_lr", Change::Autoencoder),
    ("lpips", Change::Autoencoder),
    ("perceptual_weight", Change::Autoencoder),
    ("init_from", Change::Autoencoder),
    ("train_decoder_only", Change::Autoencoder),
    ("image_fit", Change::EditField("data")),
    ("skip_unreadable", Change::EditField("data")),
];

/// `--seed` seeds the built-in sprites too, as it does without `--config`.
fn set_seed(args: &TrainArgs, config: &mut RunConfig) {
    config.training.seed = args.seed;
    if let DataSpec::Sprites(sprites) = &mut config.data {
        sprites.seed = args.seed;
    }
}

/// The configuration in `file` with the `given` flags' changes, run with this elbo and the threads set (its own
/// unless --threads is given). A flag whose effect depends on other settings is an error naming the field to edit.
pub fn config_with_flags(file: &Path, args: &TrainArgs, given: &[String]) -> anyhow::Result<RunConfig> {
    let mut config: RunConfig = elbo::outputs::read_json(file)?;
    for id in given {
        match CHANGES.iter().find(|(name, _)| name == id).map(|(_, change)| change) {
            Some(Change::Set(set)) => set(args, &mut config),
            Some(Change::EditField(field)) => anyhow::bail!(
                "--{} cannot be combined with --config: edit `{field}` in {} (or give a copy of it)",
                flag(id),
                file.display()
            ),
            Some(Change::Invocation) => {}
            Some(Change::Autoencoder) => anyhow::bail!(
                "--{} sets up a KL autoencoder (--architecture autoencoder-kl); --config repeats the VAE runs",
                flag(id)
            ),
            None => anyhow::bail!("--{} cannot be combined with --config", flag(id)),
        }
    }
    config.elbo_version = env!("CARGO_PKG_VERSION").to_string();
    config.threads = super::super::set_threads(config.threads)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Train {
        #[command(flatten)]
        args: TrainArgs,
    }

    #[test]
    fn every_flag_says_what_it_does_with_config() {
        for argument in Train::command().get_arguments() {
            let id = argument.get_id().as_str();
            if id != "resume" && id != "help" {
                assert!(CHANGES.iter().any(|(name, _)| *name == id), "--{} has no entry in CHANGES", flag(id));
            }
        }
    }

    /// The flags given in `words`, and the arguments.
    fn parse(words: &[&str]) -> (Vec<String>, TrainArgs) {
        let matches =
            Train::command().try_get_matches_from(std::iter::once("train").chain(words.iter().copied())).unwrap();
        (given_flags(&matches), Train::from_arg_matches(&matches).unwrap().args)
    }

    #[test]
    fn only_flags_given_change_the_file_and_the_rest_name_the_field_to_edit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        let (_, args) = parse(&["--lr", "0.01", "--latent-dim", "3", "--epochs", "2", "--sprite-count", "100"]);
        let (original, _) = super::super::config_from_flags(&args).unwrap();
        elbo::outputs::write_json(&file, &original).unwrap();

        let (given, args) = parse(&["--config", file.to_str().unwrap(), "--seed", "9", "--epochs", "5"]);
        let repeated = config_with_flags(&file, &args, &given).unwrap();
        assert_eq!(repeated.training.learning_rate, 0.01, "the file's value, not the flag's default");
        assert_eq!(repeated.model.latent_dim, 3);
        assert_eq!((repeated.training.epochs, repeated.training.seed), (5, 9));
        assert!(matches!(repeated.data, DataSpec::Sprites(ref sprites) if sprites.seed == 9 && sprites.count == 100));

        let (given, args) = parse(&["--config", file.to_str().unwrap(), "--hidden", "8"]);
        let message = config_with_flags(&file, &args, &given).unwrap_err().to_string();
        assert!(message.contains("--hidden") && message.contains("model.encoder_hidden"), "{message}");
    }

    #[test]
    fn resume_takes_only_flags_that_keep_the_run() {
        let (given, _) = parse(&["--resume", "r", "--epochs", "4", "--quiet", "--checkpoint-every", "5m"]);
        assert!(check_resume_flags(&given).is_ok());
        let (given, _) = parse(&["--resume", "r", "--lr", "0.1"]);
        let message = check_resume_flags(&given).unwrap_err().to_string();
        assert!(message.contains("--lr") && message.contains("--resume"), "{message}");
    }
}
