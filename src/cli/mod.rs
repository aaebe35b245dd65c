//! Command-line parsing and dispatch. Each subcommand lives in its own module and calls the library.

mod arithmetic;
mod autoencoder_kl;
mod bench;
mod compute_args;
mod data_args;
mod decode;
mod diagnose;
mod encode;
mod eval;
mod interpolate;
mod metrics;
mod model_args;
mod objective_args;
mod probe;
mod progress;
mod rate_distortion;
mod reconstruct;
mod report;
mod run_args;
mod sample;
mod train;
mod traverse;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Train, evaluate and use variational autoencoders.
#[derive(Parser)]
#[command(name = "elbo", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a VAE (with no arguments: on the built-in sprites, in about a minute).
    Train(Box<train::TrainArgs>),
    /// Decode samples from the prior N(0, I) into an image grid.
    Sample(sample::SampleArgs),
    /// Show inputs above their reconstructions.
    Reconstruct(reconstruct::ReconstructArgs),
    /// Encode data to latent codes (mu, optionally log sigma^2 or a sample), as NPY or CSV.
    Encode(encode::EncodeArgs),
    /// Decode latent codes back to images or arrays (the decoder as a decompressor).
    Decode(decode::DecodeArgs),
    /// Decode the path between the codes of two examples (linear or spherical).
    Interpolate(interpolate::InterpolateArgs),
    /// Sweep each latent dimension around one example, one row per dimension ordered by KL.
    Traverse(traverse::TraverseArgs),
    /// Add the attribute vector mean(mu | B) - mean(mu | A) to codes of class A and decode.
    Arithmetic(arithmetic::ArithmeticArgs),
    /// Measure the representation: a linear classifier on the codes, raw inputs and a random projection.
    Probe(probe::ProbeArgs),
    /// Rebuild the run's self-contained HTML report.
    Report(report::ReportArgs),
    /// Bounds on the likelihood: the negative ELBO and the importance-weighted (IWAE) estimate.
    Eval(eval::EvalArgs),
    /// Is the latent used? Active units, I(x; z), and a verdict on posterior collapse.
    Diagnose(diagnose::DiagnoseArgs),
    /// Disentanglement of a sprites model: beta-VAE and FactorVAE scores, MIG, DCI.
    Metrics(metrics::MetricsArgs),
    /// Time the hot paths: training examples/s per batch size and the IWAE bound's, median of repeats.
    Bench(Box<bench::BenchArgs>),
    /// The rate-distortion curve of KL autoencoder runs (one per KL weight): held-out PSNR against bits per pixel.
    RateDistortion(rate_distortion::RateDistortionArgs),
}

/// Parses the command line, runs the command, and turns errors into a message and a non-zero exit code.
pub fn run() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    // which flags were given (not defaulted): `train --config` and `--resume` need to know
    let train_matches = matches.subcommand_matches("train").cloned().unwrap_or_default();
    elbo::runtime::configure_cpu_threads(0); // elementwise ops inline for every command; some set the thread count
    if let Err(error) = elbo::runtime::SimdLevel::requested() {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Train(args) => train::run(*args, &train_matches),
        Command::Sample(args) => done(sample::run(args)),
        Command::Reconstruct(args) => done(reconstruct::run(args)),
        Command::Encode(args) => done(encode::run(args)),
        Command::Decode(args) => done(decode::run(args)),
        Command::Interpolate(args) => done(interpolate::run(args)),
        Command::Traverse(args) => done(traverse::run(args)),
        Command::Arithmetic(args) => done(arithmetic::run(args)),
        Command::Probe(args) => done(probe::run(args)),
        Command::Report(args) => done(report::run(args)),
        Command::Eval(args) => done(eval::run(args)),
        Command::Diagnose(args) => done(diagnose::run(args)),
        Command::Metrics(args) => done(metrics::run(args)),
        Command::Bench(args) => done(bench::run(*args)),
        Command::RateDistortion(args) => done(rate_distortion::run(args)),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets the number of compute threads (before any parallel work starts); 0 keeps the default (all cores). More than
/// [`MAX_THREADS_PER_CORE`] threads per core is refused: each thread holds its own buffers, and past the cores they
/// only cost memory.
fn set_threads(threads: usize) -> anyhow::Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let most = MAX_THREADS_PER_CORE * cores;
    if threads > most {
        anyhow::bail!(
            "--threads: at most {most} on this machine ({MAX_THREADS_PER_CORE} per core, {cores} cores), got {threads}"
        );
    }
    Ok(elbo::runtime::configure_cpu_threads(threads))
}

/// The most compute threads per core that `--threads` takes.
const MAX_THREADS_PER_CORE: usize = 8;
