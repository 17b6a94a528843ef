//! Distils a toy teacher distribution into a student with any kd-losses divergence, by name,
//! and prints the loss falling.
//!
//! The teacher is a fixed set of next-token distributions (64 contexts × 48 tokens, Zipf-like
//! and seeded); the student is a table of learnable logits, trained with Adam on the chosen
//! loss. Every 25 steps it prints the training loss, the forward KL and total variation to the
//! teacher (the same yardsticks for every loss) and steps per second.
//!
//! ```text
//! cargo run --release -p kd-examples --example toy_distill -- --loss forward_kl
//! cargo run --release -p kd-examples --example toy_distill -- --loss gkd_jsd --config '{"beta": 0.1}'
//! cargo run --release -p kd-examples --example toy_distill -- --loss all
//! ```
//!
//! `--loss` takes any dense loss id (`forward_kl`, `reverse_kl`, `hinton_kd`, `gkd_jsd`, `js`,
//! `tvd`, `skew_forward_kl`, `skew_reverse_kl`, `akl`, `taid`, `fdistill`, `alpha_divergence`,
//! `ab_divergence`, `dkd`, `atkd`, `uld`) or `all`; `--config` takes its keys as JSON;
//! `--steps N` and `--lr X` tune the run. TAID follows its adaptive t schedule.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_losses::{
    Divergence, ForwardKlConfig, KdBatch, LossConfig, Reduction, TaidConfig, TaidScheduleConfig,
    TvdConfig,
};
use kd_models::sampling::Rng;

const CONTEXTS: usize = 64;
const VOCAB: usize = 48;

struct Args {
    loss: String,
    config: Option<String>,
    steps: usize,
    lr: f64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { loss: "forward_kl".into(), config: None, steps: 200, lr: 0.1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--loss" => args.loss = value()?,
            "--config" => args.config = Some(value()?),
            "--steps" => args.steps = value()?.parse()?,
            "--lr" => args.lr = value()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "usage: toy_distill [--loss NAME|all] [--config JSON] [--steps N] [--lr X]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// Teacher logits: a Zipf-like ranking over a random permutation of the vocabulary per context.
fn teacher_logits(device: &Device) -> Tensor<2> {
    let mut rng = Rng::new(7);
    let mut data = Vec::with_capacity(CONTEXTS * VOCAB);
    for _ in 0..CONTEXTS {
        let mut order: Vec<usize> = (0..VOCAB).collect();
        for i in (1..VOCAB).rev() {
            let j = (rng.next_f32() * (i + 1) as f32) as usize % (i + 1);
            order.swap(i, j);
        }
        let mut row = vec![0f32; VOCAB];
        for (rank, &v) in order.iter().enumerate() {
            row[v] = -1.3 * ((rank + 1) as f32).ln() + 0.5 * rng.next_f32();
        }
        data.extend(row);
    }
    Tensor::from_data(TensorData::new(data, [CONTEXTS, VOCAB]), device)
}

/// Adam on one tensor of parameters.
struct Adam {
    m: Tensor<2>,
    v: Tensor<2>,
    t: i32,
    lr: f64,
}

impl Adam {
    fn step(&mut self, param: Tensor<2>, grad: Tensor<2>) -> Tensor<2> {
        let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
        self.t += 1;
        self.m = self.m.clone().mul_scalar(b1).add(grad.clone().mul_scalar(1.0 - b1));
        self.v = self.v.clone().mul_scalar(b2).add(grad.powi_scalar(2).mul_scalar(1.0 - b2));
        let m_hat = self.m.clone().div_scalar(1.0 - b1.powi(self.t));
        let v_hat = self.v.clone().div_scalar(1.0 - b2.powi(self.t));
        param.sub(m_hat.div(v_hat.sqrt().add_scalar(eps)).mul_scalar(self.lr))
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.into_scalar::<f32>())
}

fn run(name: &str, config_json: Option<&str>, args: &Args) -> Result<(f64, f64)> {
    let device = Device::flex().autodiff();
    let teacher = teacher_logits(&device);
    let labels: Tensor<1, Int> = teacher.clone().argmax(1).squeeze_dim(1);
    let config: LossConfig = match config_json {
        Some(json) => {
            let mut v: serde_json::Value =
                serde_json::from_str(json).context("--config is not JSON")?;
            v["loss"] = serde_json::Value::String(name.to_string());
            serde_json::from_value(v).context("invalid --config for this loss")?
        }
        None => LossConfig::by_name(name)?,
    };
    let mut loss: Box<dyn Divergence> = config.init()?;
    let mut schedule = (name == "taid")
        .then(|| {
            TaidScheduleConfig { num_train_steps: args.steps as u64, ..Default::default() }.init()
        })
        .transpose()?;
    let fkl = ForwardKlConfig::new().init()?;
    let tvd = TvdConfig::new().init()?;

    let mut student = Tensor::<2>::zeros([CONTEXTS, VOCAB], &device);
    let mut adam = Adam { m: student.clone(), v: student.clone(), t: 0, lr: args.lr };
    let yardsticks = |s: &Tensor<2>| -> Result<(f64, f64)> {
        let b = || KdBatch::new(s.clone().detach(), teacher.clone());
        Ok((
            scalar(fkl.forward(b(), Reduction::Mean)?.loss),
            scalar(tvd.forward(b(), Reduction::Mean)?.loss),
        ))
    };
    let (kl0, tv0) = yardsticks(&student)?;
    println!("== {name}: start  KL(p‖q) {kl0:.4}  TVD {tv0:.4}");
    let start = Instant::now();
    for step in 1..=args.steps {
        if let Some(s) = &schedule {
            loss = Box::new(TaidConfig { t: s.t(), ..TaidConfig::new() }.init()?);
        }
        let s = student.clone().require_grad();
        let out = loss.forward(
            KdBatch::new(s.clone(), teacher.clone()).with_labels(labels.clone()),
            Reduction::Mean,
        )?;
        let grads = out.loss.backward();
        let grad = s.grad(&grads).context("no gradient")?;
        student = adam.step(student, grad);
        let value = scalar(out.loss);
        if let Some(s) = schedule.as_mut() {
            s.update(step as u64, value);
        }
        if step % 25 == 0 || step == args.steps {
            let (kl, tv) = yardsticks(&student)?;
            let rate = step as f64 / start.elapsed().as_secs_f64();
            println!(
                "step {step:4}  loss {value:9.5}  KL(p‖q) {kl:.5}  TVD {tv:.5}  {rate:6.0} steps/s"
            );
        }
    }
    let (kl, tv) = yardsticks(&student)?;
    Ok((kl / kl0, tv / tv0))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let names: Vec<String> = if args.loss == "all" {
        kd_losses::LOSS_NAMES
            .iter()
            .filter(|n| LossConfig::by_name(n).is_ok())
            .map(|n| n.to_string())
            .collect()
    } else {
        vec![args.loss.clone()]
    };
    let mut summary = Vec::new();
    for name in &names {
        let (kl, tv) = run(name, args.config.as_deref(), &args)?;
        summary.push((name.clone(), kl, tv));
    }
    println!("\nloss                 final KL / start KL   final TVD / start TVD");
    for (name, kl, tv) in summary {
        println!("{name:20} {kl:19.4}   {tv:21.4}");
    }
    Ok(())
}
