//! The training loop, the seed's six steps per batch:
//! 1. encoder forward on x -> (mu_x, log sigma^2_x); 2. sample eps ~ N(0, I), z~ = mu_x + sigma_x * eps;
//! 3. decoder forward, -log p(x|z~); 4. closed-form KL; 5. per-example loss = reconstruction + KL;
//! 6. backprop through everything (including to the encoder), optimiser step.

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{Checkpoint, CheckpointEvery, EpochTotals, StreamPositions, TrainingProgress};
use super::config::{Objective, TrainConfig};
use super::step::{shard_count, step_plan, train_step, Shard, StepContext, StepFigures, StepPlan, TrainStep};
use crate::data::{batch_tensor, Batcher, Dataset, Splits};
use crate::evaluation::{evaluate_negative_elbo, ElboEstimate};
use crate::model::Vae;
use crate::objective::NoiseSource;
use crate::optimizer::Optimizer;
use crate::runtime::on_compute_threads;
use crate::{Error, Result};

/// Figures of one optimisation step (batch means, in nats).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StepRecord {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Global step, from 1.
    pub step: usize,
    /// Mean reconstruction term -log p(x|z~).
    pub reconstruction: f64,
    /// Mean KL term (unweighted).
    pub kl: f64,
    /// The KL term as it entered the loss (beta, warm-up, free bits or capacity applied); `None` for the IWAE
    /// objective, where the KL is not a separate term.
    pub weighted_kl: Option<f64>,
    /// The minimised loss: reconstruction + weighted KL, or the negative IWAE bound.
    pub loss: f64,
    /// Learning rate used for this step.
    pub learning_rate: f64,
    /// Seconds since training started.
    pub wall_seconds: f64,
}

/// Figures at the end of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Global step at the end of the epoch.
    pub step: usize,
    /// Means of the training steps' terms over the epoch.
    pub train: ElboEstimate,
    /// Mean of the steps' weighted KL over the epoch (`None` for the IWAE objective).
    pub train_weighted_kl: Option<f64>,
    /// Mean of the steps' losses over the epoch.
    pub train_loss: f64,
    /// The held-out set's single-sample negative ELBO and terms after the epoch (`None` when training has no
    /// held-out data).
    pub held_out: Option<ElboEstimate>,
    /// Learning rate at the end of the epoch.
    pub learning_rate: f64,
    /// Seconds since training started.
    pub wall_seconds: f64,
    /// Training examples per second in this epoch (optimisation only, evaluation excluded).
    pub examples_per_second: f64,
}

/// Watches training: progress display, logs, checkpoints. Every method has a do-nothing default. Observers are
/// `Send`: on the CPU, [`train_from`] runs its loop on one of the compute threads.
pub trait TrainingObserver: Send {
    /// Called once before the first step, with how the steps will be computed.
    fn on_start(&mut self, _plan: &StepPlan) -> Result<()> {
        Ok(())
    }
    /// Called before the first step of an epoch (or the first step after a resume in the middle of one).
    fn on_epoch_start(&mut self, _epoch: usize, _num_batches: usize) -> Result<()> {
        Ok(())
    }
    /// Called after every optimisation step.
    fn on_step(&mut self, _record: &StepRecord) -> Result<()> {
        Ok(())
    }
    /// Called after each epoch's evaluation; the model's weights are those at the end of the epoch.
    fn on_epoch_end(&mut self, _record: &EpochRecord, _varmap: &VarMap) -> Result<()> {
        Ok(())
    }
    /// Called at every checkpoint: the end of each epoch (after `on_epoch_end`), every
    /// [`TrainConfig::checkpoint_every`], and when training stops early. `varmap` holds the weights at that point;
    /// with `checkpoint`, they continue the run exactly ([`train_from`]).
    fn on_checkpoint(&mut self, _checkpoint: &Checkpoint, _varmap: &VarMap) -> Result<()> {
        Ok(())
    }
    /// Polled after every step: returning true stops training early (e.g. on Ctrl-C).
    fn should_stop(&self) -> bool {
        false
    }
}

/// How training ended.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct TrainOutcome {
    /// Epochs run to the end (across resumes).
    pub epochs_completed: usize,
    /// Optimisation steps taken (across resumes).
    pub steps: usize,
    /// True when an observer asked to stop before the last epoch ended.
    pub interrupted: bool,
    /// The last completed epoch's figures.
    pub last_epoch: Option<EpochRecord>,
    /// Seconds spent in optimisation steps (evaluation excluded), across resumes.
    pub train_seconds: f64,
    /// Training examples processed per second of `train_seconds`.
    pub examples_per_second: f64,
    /// How the steps were computed.
    pub plan: Option<StepPlan>,
}

/// Seed offsets: independent random streams for shuffling, noise and binarization.
const SHUFFLE_STREAM: u64 = 0x5_4aff1e;
const NOISE_STREAM: u64 = 0x0_e9511;
const BINARIZE_STREAM: u64 = 0xb1_0a71;

/// Trains `vae` (whose variables are `varmap`) on `splits.train`, evaluating on `splits.test` after each epoch.
/// Same seed and same thread count give the same numbers bit for bit.
pub fn train(
    vae: &Vae,
    varmap: &VarMap,
    splits: &Splits,
    config: &TrainConfig,
    device: &Device,
    observers: &mut [&mut dyn TrainingObserver],
) -> Result<TrainOutcome> {
    train_from(vae, varmap, splits, config, device, None, observers)
}

/// Trains as [`train`] does, continuing from `resume` when given: `varmap` must then hold the checkpoint's weights.
/// Training to N epochs in one go and training to M < N, then resuming to N, give the same numbers bit for bit
/// (same thread count). A run whose `config.epochs` (or `max_steps`) is already reached does nothing.
pub fn train_from(
    vae: &Vae,
    varmap: &VarMap,
    splits: &Splits,
    config: &TrainConfig,
    device: &Device,
    resume: Option<&Checkpoint>,
    observers: &mut [&mut dyn TrainingObserver],
) -> Result<TrainOutcome> {
    config.validate()?;
    vae.check_input(&splits.train.shape, &splits.train.source)?;
    vae.check_input(&splits.test.shape, &splits.test.source)?;
    // the plan is made on the compute thread too: it reads the kernel threads there
    on_compute_threads(device, || {
        let mut loop_state = LoopState::new(config, vae, varmap, splits.train.len(), device)?;
        if let Some(checkpoint) = resume {
            loop_state.restore(checkpoint)?;
        }
        loop_state.run(vae, varmap, splits, device, observers)
    })
}

/// Seconds of training across resumes: those before this process plus this process's.
#[derive(Clone, Copy)]
struct Clock {
    started: Instant,
    before: f64,
}

impl Clock {
    fn seconds(&self) -> f64 {
        self.before + self.started.elapsed().as_secs_f64()
    }
}

/// The state that lives across epochs: optimiser, random streams, where the run stands.
struct LoopState {
    /// The settings, with the KL weighting's spans in steps.
    config: TrainConfig,
    optimizer: Optimizer,
    shuffle_rng: ChaCha8Rng,
    binarize_rng: ChaCha8Rng,
    noise: NoiseSource,
    /// Where the run stands (what a checkpoint stores besides the weights and the optimiser).
    progress: TrainingProgress,
    dataset_size: usize,
    /// When the last checkpoint was written, for [`CheckpointEvery::Minutes`].
    last_checkpoint: Instant,
    /// How each step is computed.
    plan: StepPlan,
    /// The step itself.
    train_step: &'static dyn TrainStep,
}

impl LoopState {
    fn new(config: &TrainConfig, vae: &Vae, varmap: &VarMap, dataset_size: usize, device: &Device) -> Result<Self> {
        let plan = step_plan(vae, config, device)?;
        let steps_per_epoch = dataset_size.div_ceil(config.batch_size.max(1));
        let kl = config.kl.resolved(steps_per_epoch, config.epochs);
        Ok(LoopState {
            config: TrainConfig { kl, ..config.clone() },
            optimizer: Optimizer::new(config.optimizer, config.learning_rate, varmap)?,
            shuffle_rng: ChaCha8Rng::seed_from_u64(config.seed ^ SHUFFLE_STREAM),
            binarize_rng: ChaCha8Rng::seed_from_u64(config.seed ^ BINARIZE_STREAM),
            noise: NoiseSource::new(config.seed ^ NOISE_STREAM),
            progress: TrainingProgress { epoch: 1, ..TrainingProgress::default() },
            dataset_size,
            last_checkpoint: Instant::now(),
            train_step: train_step(plan.path),
            plan,
        })
    }

    /// Continues from `checkpoint`: its optimiser state, stream positions and progress.
    fn restore(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        if checkpoint.progress.epoch == 0 {
            return Err(Error::invalid_setting("checkpoint", "its epoch must be at least 1"));
        }
        self.optimizer.restore(&checkpoint.optimizer)?;
        let streams = checkpoint.progress.streams;
        self.shuffle_rng.set_word_pos(streams.shuffle_at_epoch_start);
        self.noise.set_position(streams.noise);
        self.binarize_rng.set_word_pos(streams.binarize);
        self.progress = checkpoint.progress.clone();
        Ok(())
    }

    /// The epochs left, `observers` told of each stage; how training ended.
    fn run(
        mut self,
        vae: &Vae,
        varmap: &VarMap,
        splits: &Splits,
        device: &Device,
        observers: &mut [&mut dyn TrainingObserver],
    ) -> Result<TrainOutcome> {
        for observer in observers.iter_mut() {
            observer.on_start(&self.plan)?;
        }
        let clock = Clock { started: Instant::now(), before: self.progress.wall_seconds };
        let mut interrupted = false;
        while self.progress.epoch <= self.config.epochs && !self.step_limit_reached() {
            let end = self.run_epoch(vae, varmap, &splits.train, device, clock, observers)?;
            if end == EpochEnd::Interrupted {
                self.checkpoint(varmap, clock, observers)?;
                interrupted = true;
                break;
            }
            self.end_epoch(vae, varmap, &splits.test, device, clock, observers)?;
            if end == EpochEnd::Completed {
                self.next_epoch();
            }
            self.checkpoint(varmap, clock, observers)?;
        }
        Ok(self.outcome(interrupted))
    }

    fn step_limit_reached(&self) -> bool {
        self.config.max_steps.is_some_and(|limit| self.progress.step >= limit)
    }

    /// The rest of the epoch in progress (all of it, or from where a checkpoint left it), up to the step limit;
    /// how it ended.
    fn run_epoch(
        &mut self,
        vae: &Vae,
        varmap: &VarMap,
        train: &Dataset,
        device: &Device,
        clock: Clock,
        observers: &mut [&mut dyn TrainingObserver],
    ) -> Result<EpochEnd> {
        // the order of the epoch is drawn again from the shuffling stream's position at the epoch's start
        self.shuffle_rng.set_word_pos(self.progress.streams.shuffle_at_epoch_start);
        let mut batcher = Batcher::shuffled(train, self.config.batch_size, &mut self.shuffle_rng);
        batcher.skip_batches(self.progress.batches_done);
        for observer in observers.iter_mut() {
            observer.on_epoch_start(self.progress.epoch, batcher.num_batches())?;
        }
        let mut step_started = Instant::now();
        while let Some((mut values, rows)) = batcher.next_batch() {
            self.config.binarization.apply(&mut values, &mut self.binarize_rng);
            let x = batch_tensor(values, rows, train.shape.dim(), device)?;
            let record = self.step(vae, &x, clock)?;
            self.progress.batches_done += 1;
            self.progress.examples_seen += rows;
            self.progress.totals.add(&record, rows);
            let seconds = step_started.elapsed().as_secs_f64();
            self.progress.totals.seconds += seconds;
            self.progress.train_seconds += seconds;
            for observer in observers.iter_mut() {
                observer.on_step(&record)?;
            }
            if observers.iter().any(|observer| observer.should_stop()) {
                return Ok(EpochEnd::Interrupted);
            }
            if self.step_limit_reached() {
                return Ok(EpochEnd::StepLimit);
            }
            if self.checkpoint_due() {
                self.checkpoint(varmap, clock, observers)?;
            }
            step_started = Instant::now();
        }
        Ok(EpochEnd::Completed)
    }

    /// True when [`TrainConfig::checkpoint_every`] asks for a checkpoint now.
    fn checkpoint_due(&self) -> bool {
        match self.config.checkpoint_every {
            Some(CheckpointEvery::Steps(steps)) => self.progress.step.is_multiple_of(steps),
            Some(CheckpointEvery::Minutes(minutes)) => self.last_checkpoint.elapsed().as_secs_f64() >= minutes * 60.0,
            None => false,
        }
    }

    /// Evaluates the model on the held-out set (when there is one) and reports the epoch (whole, or cut short by the step limit).
    fn end_epoch(
        &mut self,
        vae: &Vae,
        varmap: &VarMap,
        held_out: &Dataset,
        device: &Device,
        clock: Clock,
        observers: &mut [&mut dyn TrainingObserver],
    ) -> Result<()> {
        let config = &self.config;
        let held_out = match held_out.is_empty() {
            true => None,
            false => Some(evaluate_negative_elbo(
                vae,
                held_out,
                config.eval_batch_size,
                config.binarization,
                config.seed,
                device,
            )?),
        };
        let totals = self.progress.totals;
        let record = EpochRecord {
            epoch: self.progress.epoch,
            step: self.progress.step,
            train: totals.estimate,
            train_weighted_kl: totals.weighted_kl(),
            train_loss: totals.loss(),
            held_out,
            learning_rate: self.optimizer.learning_rate(),
            wall_seconds: clock.seconds(),
            examples_per_second: totals.estimate.examples as f64 / totals.seconds.max(f64::MIN_POSITIVE),
        };
        for observer in observers.iter_mut() {
            observer.on_epoch_end(&record, varmap)?;
        }
        self.progress.last_epoch = Some(record);
        Ok(())
    }

    /// Moves to the start of the next epoch.
    fn next_epoch(&mut self) {
        self.progress.epoch += 1;
        self.progress.batches_done = 0;
        self.progress.totals = EpochTotals::default();
        self.progress.streams.shuffle_at_epoch_start = self.shuffle_rng.get_word_pos();
    }

    /// Hands the observers the state that continues the run from here.
    fn checkpoint(&mut self, varmap: &VarMap, clock: Clock, observers: &mut [&mut dyn TrainingObserver]) -> Result<()> {
        self.progress.streams = StreamPositions {
            noise: self.noise.position(),
            binarize: self.binarize_rng.get_word_pos(),
            ..self.progress.streams
        };
        self.progress.wall_seconds = clock.seconds();
        let checkpoint = Checkpoint { progress: self.progress.clone(), optimizer: self.optimizer.state()? };
        for observer in observers.iter_mut() {
            observer.on_checkpoint(&checkpoint, varmap)?;
        }
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// How the run ended.
    fn outcome(&self, interrupted: bool) -> TrainOutcome {
        let progress = &self.progress;
        TrainOutcome {
            epochs_completed: progress.last_epoch.map_or(0, |record| record.epoch),
            steps: progress.step,
            interrupted,
            last_epoch: progress.last_epoch,
            train_seconds: progress.train_seconds,
            examples_per_second: progress.examples_seen as f64 / progress.train_seconds.max(f64::MIN_POSITIVE),
            plan: Some(self.plan.clone()),
        }
    }

    /// One optimisation step on the batch `x`. The batch is split into the plan's shards (each of at least 32
    /// rows); each shard runs forward and backward on its own thread, its loss weighted by its share of the batch,
    /// and the shards' gradients are summed inside the optimiser: the same gradient as the whole batch's (the fused
    /// step makes a large last decoder weight's gradient once for the whole batch instead). On 2 cores
    /// this beats splitting every kernel over both threads by about 1.4x (see BENCHMARKS.md): the threads meet twice
    /// per step instead of at every operation, and the elementwise work is split too.
    fn step(&mut self, vae: &Vae, x: &Tensor, clock: Clock) -> Result<StepRecord> {
        self.progress.step += 1;
        let shards = self.shards(vae, x)?;
        let context = StepContext { config: &self.config, step: self.progress.step, dataset_size: self.dataset_size };
        let (figures, grads) = self.train_step.run(vae, &shards, &context)?;
        self.check_finite(&figures)?;
        self.optimizer.step_sharded(&grads)?;
        Ok(StepRecord {
            epoch: self.progress.epoch,
            step: self.progress.step,
            reconstruction: figures.reconstruction,
            kl: figures.kl,
            weighted_kl: figures.weighted_kl,
            loss: figures.loss,
            learning_rate: self.optimizer.learning_rate(),
            wall_seconds: clock.seconds(),
        })
    }

    /// The batch's shards with their noise, drawn in shard order from the one noise stream (step 2's eps).
    fn shards(&mut self, vae: &Vae, x: &Tensor) -> Result<Vec<Shard>> {
        let rows = x.dim(0)?;
        let count = shard_count(self.plan.shards, rows);
        let samples = match self.config.objective {
            Objective::Iwae { samples } => samples,
            Objective::Elbo | Objective::Tcvae { .. } => 1,
        };
        (0..count)
            .map(|index| {
                let (start, end) = (index * rows / count, (index + 1) * rows / count);
                let latent_dim = vae.config().latent_dim;
                Ok(Shard {
                    x: x.narrow(0, start, end - start)?,
                    eps: self.noise.standard_normal((end - start) * samples, latent_dim, x.dtype(), x.device())?,
                    share: (end - start) as f64 / rows as f64,
                })
            })
            .collect()
    }

    fn check_finite(&self, figures: &StepFigures) -> Result<()> {
        let terms = [("reconstruction", figures.reconstruction), ("KL", figures.kl), ("loss", figures.loss)];
        match terms.iter().find(|(_, value)| !value.is_finite()) {
            Some(&(term, value)) => Err(Error::NonFinite {
                step: self.progress.step,
                epoch: self.progress.epoch,
                term: term.to_string(),
                value,
            }),
            None => Ok(()),
        }
    }
}

/// How a pass over the training set ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EpochEnd {
    /// Every batch was used.
    Completed,
    /// The step limit was reached first.
    StepLimit,
    /// An observer asked to stop.
    Interrupted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ExampleShape;
    use crate::model::init::initialize;
    use crate::model::VaeConfig;
    use crate::objective::{KlSchedule, KlWeighting};
    use crate::training::step::{StepChoice, StepPath};
    use candle_core::DType;
    use candle_nn::VarBuilder;

    /// A small MLP VAE with seeded weights.
    fn model() -> (Vae, VarMap) {
        let config = VaeConfig {
            input_shape: ExampleShape::flat(30),
            latent_dim: 4,
            encoder_hidden: vec![16],
            decoder_hidden: vec![16],
            ..VaeConfig::default()
        };
        let varmap = VarMap::new();
        let vae = Vae::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        initialize(&varmap, 7).unwrap();
        (vae, varmap)
    }

    /// Two steps on fixed batches of 96 grey examples, the batch split into `shards`, through the fused step where
    /// it covers the run unless `graph_only`; the figures of the last step and every parameter afterwards, in name
    /// order.
    fn two_steps_with(config: &TrainConfig, shards: usize, graph_only: bool) -> (StepRecord, Vec<f32>) {
        let (vae, varmap) = model();
        let mut state = LoopState::new(config, &vae, &varmap, 1000, &Device::Cpu).unwrap();
        state.plan.shards = shards;
        if graph_only {
            state.train_step = train_step(StepPath::Graph);
        }
        let mut record = None;
        for batch in 0..2 {
            let values: Vec<f32> = (0..96 * 30).map(|i| ((i * 37 + batch * 11) % 101) as f32 / 100.0).collect();
            let x = Tensor::from_vec(values, (96, 30), &Device::Cpu).unwrap();
            record = Some(state.step(&vae, &x, Clock { started: Instant::now(), before: 0.0 }).unwrap());
        }
        (record.unwrap(), parameters_in_name_order(&varmap))
    }

    /// Every parameter's values, the parameters in name order.
    fn parameters_in_name_order(varmap: &VarMap) -> Vec<f32> {
        let mut named: Vec<(String, Tensor)> =
            varmap.data().lock().unwrap().iter().map(|(name, var)| (name.clone(), var.as_tensor().clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.iter().flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    }

    fn two_steps(config: &TrainConfig, shards: usize) -> (StepRecord, Vec<f32>) {
        two_steps_with(config, shards, false)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + a.abs())
    }

    /// The figures of two runs agree and their parameters differ by less than 1e-5.
    fn assert_same_steps(a: &(StepRecord, Vec<f32>), b: &(StepRecord, Vec<f32>), label: &str) {
        let ((first, first_parameters), (second, second_parameters)) = (a, b);
        let pairs = [
            (first.reconstruction, second.reconstruction),
            (first.kl, second.kl),
            (first.loss, second.loss),
            (first.weighted_kl.unwrap_or(0.0), second.weighted_kl.unwrap_or(0.0)),
        ];
        assert!(pairs.iter().all(|&(a, b)| close(a, b)), "{label}: {first:?} vs {second:?}");
        let worst = first_parameters.iter().zip(second_parameters).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{label}: parameters differ by {worst}");
    }

    #[test]
    fn a_batch_split_into_shards_takes_the_same_steps_as_the_whole_batch() {
        let warm_up = KlWeighting {
            beta: 2.0,
            schedule: KlSchedule::Linear { over: crate::objective::Span::Steps(5) },
            ..KlWeighting::default()
        };
        let configs = [
            TrainConfig::default(),
            TrainConfig { kl: warm_up, ..TrainConfig::default() },
            TrainConfig { objective: Objective::Iwae { samples: 3 }, ..TrainConfig::default() },
            TrainConfig {
                optimizer: crate::training::OptimizerConfig::Sgd { momentum: 0.9 },
                ..TrainConfig::default()
            },
        ];
        for (config, graph_only) in configs.iter().flat_map(|config| [(config, false), (config, true)]) {
            let whole = two_steps_with(config, 1, graph_only);
            for shards in [2, 3] {
                let label = format!("{config:?}, {shards} shards, graph only: {graph_only}");
                assert_same_steps(&whole, &two_steps_with(config, shards, graph_only), &label);
            }
        }
    }

    #[test]
    fn fused_steps_take_the_same_steps_as_candles_graph() {
        let warm_up = KlWeighting {
            beta: 2.0,
            schedule: KlSchedule::Linear { over: crate::objective::Span::Steps(5) },
            ..KlWeighting::default()
        };
        for config in [TrainConfig::default(), TrainConfig { kl: warm_up, ..TrainConfig::default() }] {
            let (vae, varmap) = model();
            assert_eq!(LoopState::new(&config, &vae, &varmap, 1000, &Device::Cpu).unwrap().plan.path, StepPath::Fused);
            let graph = two_steps_with(&config, 1, true);
            for shards in [1, 2] {
                assert_same_steps(&graph, &two_steps(&config, shards), &format!("{config:?}, {shards} shards"));
            }
        }
    }

    #[test]
    fn losses_that_look_across_the_batch_are_not_split_on_the_graph() {
        let free_bits = KlWeighting { free_bits: Some(0.5), ..KlWeighting::default() };
        let capacity = KlWeighting {
            capacity: Some(crate::objective::Capacity {
                max_nats: 5.0,
                over: crate::objective::Span::Steps(10),
                gamma: 100.0,
            }),
            ..KlWeighting::default()
        };
        for config in [
            TrainConfig { kl: free_bits, ..TrainConfig::default() },
            TrainConfig { kl: capacity, ..TrainConfig::default() },
            TrainConfig { objective: Objective::Tcvae { tc_beta: 6.0 }, ..TrainConfig::default() },
        ] {
            assert!(!config.loss_is_mean_of_examples(), "{config:?}");
            let config = TrainConfig { step: StepChoice::Graph, ..config };
            let (vae, varmap) = model();
            assert_eq!(LoopState::new(&config, &vae, &varmap, 100, &Device::Cpu).unwrap().plan.shards, 1);
        }
        assert!(TrainConfig::default().loss_is_mean_of_examples());
    }

    /// Six Adam steps of the 784-400-20 MLP at batch 8,192 on the first CUDA device, when there is one, twice, with
    /// 1e30 and then NaN left in the device's memory: both runs end on the same parameters to the bit, and the
    /// first step's loss is the CPU's. Before the optimiser kept to the calling thread on CUDA, its updates ran on
    /// worker threads, each with its own CUDA stream, unordered against the step's kernels: on an H200 such runs
    /// differed from run to run and diverged.
    #[cfg(feature = "cuda")]
    #[test]
    fn large_batch_steps_on_cuda_repeat_exactly() {
        use crate::training::step::cuda_tests::{cuda_device, fill_device_memory, mnist_mlp_weights};
        let Some(device) = cuda_device() else { return };
        let (config, _dir, weights) = mnist_mlp_weights(3);
        let rows = 8192;
        let run = |device: &Device, steps: usize, garbage: Option<f32>| {
            if let Some(garbage) = garbage {
                fill_device_memory(device, garbage);
            }
            let (vae, varmap) = Vae::load(&config, &weights, device).unwrap();
            let mut state = LoopState::new(&TrainConfig::default(), &vae, &varmap, 60_000, device).unwrap();
            let losses: Vec<f64> = (0..steps)
                .map(|step| {
                    let values: Vec<f32> =
                        (0..rows * 784).map(|i| ((i * 37 + step * 11) % 101) as f32 / 100.0).collect();
                    let x = Tensor::from_vec(values, (rows, 784), device).unwrap();
                    state.step(&vae, &x, Clock { started: Instant::now(), before: 0.0 }).unwrap().loss
                })
                .collect();
            (losses, parameters_in_name_order(&varmap))
        };
        let (first_losses, first) = run(&device, 6, Some(1e30));
        let (second_losses, second) = run(&device, 6, Some(f32::NAN));
        let differing = first.iter().zip(&second).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "{differing} of {} parameters differ between two runs", first.len());
        assert_eq!(first_losses, second_losses);
        let (cpu_losses, _) = run(&Device::Cpu, 1, None);
        assert!(
            close(first_losses[0], cpu_losses[0]),
            "first loss {} against the CPU's {}",
            first_losses[0],
            cpu_losses[0]
        );
    }
}
