//! `kd scaling-law`: fit the distillation scaling law to a table of runs, print the
//! coefficients and the fit, predict students, find the compute-optimal student for a budget,
//! and plot it (see `kd_train::scaling_fit`).
//!
//! The table is a CSV with the header `n_student,d_student,teacher_loss,student_loss`; an empty
//! `teacher_loss` marks a supervised run (no teacher).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use kd_losses::DistillationScalingLaw;
use kd_train::scaling_fit::{
    ComputeOptimal, FitOptions, ScalingFit, ScalingRun, SupervisedCoefficients, TeacherCost,
    compute_optimal, fit,
};
use serde::Serialize;

use crate::error::Input;
use crate::plot::{Chart, Series, write_png_stack};

/// `kd scaling-law`.
#[derive(Debug, Args)]
pub struct ScalingLawArgs {
    /// The runs: a CSV with the header `n_student,d_student,teacher_loss,student_loss` (empty
    /// `teacher_loss` = a supervised run).
    #[arg(long, value_name = "FILE.csv")]
    pub runs: PathBuf,
    /// Output directory: `fit.json` and `scaling_law.png`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Known supervised coefficients (a JSON object `{"E", "A", "B", "alpha", "beta",
    /// "gamma"}`) instead of fitting them to supervised runs.
    #[arg(long, value_name = "FILE.json")]
    pub supervised: Option<PathBuf>,
    /// Predict a student: `N,D,L_T` (parameters, tokens, teacher loss); repeatable.
    #[arg(long, value_name = "N,D,L_T")]
    pub predict: Vec<String>,
    /// A FLOP budget to split between student size and tokens (needs --teacher-params and
    /// --teacher-loss).
    #[arg(long, value_name = "FLOPS", requires_all = ["teacher_params", "teacher_loss"])]
    pub budget: Option<f64>,
    /// The teacher's parameters (with --budget).
    #[arg(long, value_name = "N")]
    pub teacher_params: Option<f64>,
    /// The teacher's loss (with --budget).
    #[arg(long, value_name = "L")]
    pub teacher_loss: Option<f64>,
    /// The teacher's logits already exist: do not charge its forward passes (`2·N_T·D`).
    #[arg(long)]
    pub no_teacher_inference: bool,
    /// Charge the teacher's pretraining on this many tokens (`6·N_T·D_T`) to the budget.
    #[arg(long, value_name = "D_T")]
    pub teacher_pretraining_tokens: Option<f64>,
    /// Smallest and largest student sizes searched with --budget.
    #[arg(long, value_name = "MIN,MAX", default_value = "1e6,1e12")]
    pub n_range: String,
}

/// What `fit.json` holds.
#[derive(Debug, Serialize)]
struct Report {
    fit: ScalingFit,
    predictions: Vec<Prediction>,
    compute_optimal: Option<ComputeOptimal>,
}

#[derive(Debug, Serialize)]
struct Prediction {
    n_student: f64,
    d_student: f64,
    teacher_loss: f64,
    student_loss: f64,
    supervised_loss: f64,
}

/// Reads the runs table.
pub fn read_runs(path: &Path) -> Result<Vec<ScalingRun>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut runs = Vec::new();
    for (i, row) in reader.deserialize::<ScalingRun>().enumerate() {
        // Line i + 2: the header is line 1.
        runs.push(row.with_context(|| format!("{} line {}", path.display(), i + 2))?);
    }
    if runs.is_empty() {
        bail!(
            "{}: no runs (expected rows under the header n_student,d_student,teacher_loss,student_loss)",
            path.display()
        );
    }
    Ok(runs)
}

fn numbers(s: &str, n: usize, what: &str) -> Result<Vec<f64>> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("{what}: expected {n} comma-separated numbers, got {s:?}"))?;
    if v.len() != n {
        bail!("{what}: expected {n} comma-separated numbers, got {s:?}");
    }
    Ok(v)
}

/// `kd scaling-law`.
pub fn cmd_scaling_law(o: &ScalingLawArgs) -> Result<()> {
    let runs = read_runs(&o.runs).input()?;
    let supervised = match &o.supervised {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))
                .input()?;
            let s: SupervisedCoefficients = serde_json::from_str(&text)
                .with_context(|| format!("{}: supervised coefficients", p.display()))
                .input()?;
            Some(s)
        }
        None => None,
    };
    let predicts =
        o.predict.iter().map(|p| numbers(p, 3, "--predict")).collect::<Result<Vec<_>>>().input()?;
    let n_range = numbers(&o.n_range, 2, "--n-range").input()?;
    let options = FitOptions { supervised, ..FitOptions::default() };
    eprintln!("fitting {} runs ...", runs.len());
    let fitted = fit(&runs, &options).input()?;
    let law = fitted.law();
    let c = &fitted.coefficients;
    println!("distillation scaling law fitted to {}", o.runs.display());
    println!(
        "  supervised  E = {:.4}  A = {:.4e}  B = {:.4e}  alpha = {:.4}  beta = {:.4}  gamma = {:.4}  ({} runs, rmse of ln L: {:.2e})",
        c.E, c.A, c.B, c.alpha, c.beta, c.gamma, fitted.supervised_runs, fitted.supervised_rmse_log
    );
    println!(
        "  distilled   A' = {:.4e}  B' = {:.4e}  alpha' = {:.4}  beta' = {:.4}  gamma' = {:.4}  c0 = {:.4}  c1 = {:.4}  d1 = {:.4}  f1 = {:.4}  ({} runs, rmse of ln L: {:.2e})",
        c.A_prime,
        c.B_prime,
        c.alpha_prime,
        c.beta_prime,
        c.gamma_prime,
        c.c0,
        c.c1,
        c.d1,
        c.f1,
        fitted.distilled_runs,
        fitted.distilled_rmse_log
    );
    let predictions: Vec<Prediction> = predicts
        .iter()
        .map(|p| Prediction {
            n_student: p[0],
            d_student: p[1],
            teacher_loss: p[2],
            student_loss: law.student_loss(p[0], p[1], p[2]),
            supervised_loss: law.supervised_loss(p[0], p[1]),
        })
        .collect();
    for p in &predictions {
        println!(
            "  predict N = {:.3e}, D = {:.3e}, L_T = {:.4}: distilled {:.4}, supervised {:.4}",
            p.n_student, p.d_student, p.teacher_loss, p.student_loss, p.supervised_loss
        );
    }
    let teacher = match (o.budget, o.teacher_params, o.teacher_loss) {
        (Some(_), Some(params), Some(loss)) => Some(TeacherCost {
            params,
            loss,
            inference: !o.no_teacher_inference,
            pretraining_tokens: o.teacher_pretraining_tokens,
        }),
        _ => None,
    };
    let optimal = match (o.budget, teacher) {
        (Some(flops), Some(t)) => {
            let best = compute_optimal(&law, flops, t, (n_range[0], n_range[1])).input()?;
            println!(
                "  compute-optimal for {flops:.3e} FLOPs: N = {:.3e} parameters, D = {:.3e} tokens, predicted loss {:.4} (student {:.3e} FLOPs, teacher {:.3e})",
                best.n_student,
                best.d_student,
                best.student_loss,
                best.student_flops,
                best.teacher_flops
            );
            Some(best)
        }
        _ => None,
    };
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let report = Report { fit: fitted.clone(), predictions, compute_optimal: optimal };
    let json_path = o.out.join("fit.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let mut charts = vec![fit_chart(&runs, &law)];
    if let (Some(flops), Some(t), Some(best)) = (o.budget, teacher, optimal) {
        charts.push(budget_chart(&law, flops, t, (n_range[0], n_range[1]), &best));
    }
    let png = o.out.join("scaling_law.png");
    write_png_stack(&charts, &png)?;
    println!("wrote {} and {}", json_path.display(), png.display());
    Ok(())
}

/// Student loss against log₁₀ tokens: the runs of the most common teacher loss, one observed
/// series and one fitted curve per student size.
fn fit_chart(runs: &[ScalingRun], law: &DistillationScalingLaw) -> Chart {
    let mut teachers: Vec<(u64, usize)> = Vec::new();
    for r in runs.iter().filter_map(|r| r.teacher_loss) {
        match teachers.iter_mut().find(|(b, _)| *b == r.to_bits()) {
            Some((_, n)) => *n += 1,
            None => teachers.push((r.to_bits(), 1)),
        }
    }
    let lt = teachers.iter().max_by_key(|(_, n)| *n).map(|(b, _)| f64::from_bits(*b));
    let mut series = Vec::new();
    if let Some(lt) = lt {
        let mut sizes: Vec<f64> =
            runs.iter().filter(|r| r.teacher_loss == Some(lt)).map(|r| r.n_student).collect();
        sizes.sort_by(f64::total_cmp);
        sizes.dedup();
        for n in sizes.iter().take(4) {
            let mut pts: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r.teacher_loss == Some(lt) && r.n_student == *n)
                .map(|r| (r.d_student.log10(), r.student_loss))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (lo, hi) = (pts[0].0, pts[pts.len() - 1].0);
            let curve = (0..=60)
                .map(|i| {
                    let x = lo + (hi - lo) * f64::from(i) / 60.0;
                    (x, law.student_loss(*n, 10f64.powf(x), lt))
                })
                .collect();
            series.push(Series { name: format!("runs, N = {n:.2e}"), points: pts });
            series.push(Series { name: format!("fit, N = {n:.2e}"), points: curve });
        }
    }
    Chart {
        title: match lt {
            Some(lt) => format!("distilled student loss, teacher loss {lt:.3}"),
            None => "distilled student loss".into(),
        },
        x_label: "log10 tokens".into(),
        y_label: "student loss (nats)".into(),
        series,
        width: 900,
        height: 520,
    }
}

/// Predicted student loss along the budget's iso-FLOP line, with the optimum marked.
fn budget_chart(
    law: &DistillationScalingLaw,
    flops: f64,
    t: TeacherCost,
    n_range: (f64, f64),
    best: &ComputeOptimal,
) -> Chart {
    let (a, b) = (n_range.0.log10(), n_range.1.log10());
    let points = (0..=120)
        .map(|i| {
            let x = a + (b - a) * f64::from(i) / 120.0;
            let n = 10f64.powf(x);
            (x, law.student_loss(n, t.student_tokens(flops, n), t.loss))
        })
        .collect();
    Chart {
        title: format!(
            "budget {flops:.2e} FLOPs: best N = {:.2e}, D = {:.2e}, loss {:.3}",
            best.n_student, best.d_student, best.student_loss
        ),
        x_label: "log10 student parameters".into(),
        y_label: "predicted student loss".into(),
        series: vec![
            Series { name: "iso-FLOP".into(), points },
            Series {
                name: "optimum".into(),
                points: vec![(best.n_student.log10(), best.student_loss)],
            },
        ],
        width: 900,
        height: 420,
    }
}
