//! Writing a fresh set of golden files: the committed files' case names, shapes and config
//! tables, with inputs from a seeded generator and outputs from [`recompute`](crate::recompute).
//!
//! Inputs are rounded to multiples of 1e-4 (1e-6 for the `near_identical` perturbation) so
//! they print short. Case kinds (`N × V`, logit distribution):
//!
//! ```text
//! random_small_std1  5 × 11    N(0, 1)          random_small_std3  8 × 37   N(0, 3)
//! peaked             4 × 23    U(−40, 40)       near_identical     6 × 17   N(0, 2), teacher = student + 1e-3·N(0, 1)
//! masked             8 × 13    N(0, 2), rows 1 and 6 mask 0, row 3 label −100
//! temperature_2      6 × 19    N(0, 2.5)        large              16 × 1000 N(0, 2)
//! loss-specific      6 × 15    N(0, 2)          (atkd alpha_0.5: 9 × 15)
//! ```

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{GoldenError, Result};
use crate::json::{self, arr, int_arr, int_mat, mat};
use crate::rows::log_softmax_f64;

/// A small deterministic generator (SplitMix64) with uniform and normal draws. Its own, not
/// `kd_models::sampling::Rng`: the reference depends on nothing of the library it checks.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// Rounds to a multiple of `step` (inputs then print as short decimals).
fn round_to(x: f64, step: f64) -> f64 {
    let r = (x / step).round() * step;
    // Re-parse the short decimal so that the stored double is exactly what the file says.
    format!("{r:.6}").parse().unwrap_or(r)
}

/// The common case kinds of every row-wise file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Std1,
    Std3,
    Peaked,
    NearIdentical,
    Masked,
    Temperature2,
    Large,
    /// A loss-specific case with `n` rows.
    Extra(usize),
}

impl Kind {
    const STANDARD: [(Kind, &'static str); 7] = [
        (Kind::Std1, "random_small_std1"),
        (Kind::Std3, "random_small_std3"),
        (Kind::Peaked, "peaked"),
        (Kind::NearIdentical, "near_identical"),
        (Kind::Masked, "masked"),
        (Kind::Temperature2, "temperature_2"),
        (Kind::Large, "large"),
    ];

    fn shape(self) -> (usize, usize) {
        match self {
            Kind::Std1 => (5, 11),
            Kind::Std3 => (8, 37),
            Kind::Peaked => (4, 23),
            Kind::NearIdentical => (6, 17),
            Kind::Masked => (8, 13),
            Kind::Temperature2 => (6, 19),
            Kind::Large => (16, 1000),
            Kind::Extra(n) => (n, 15),
        }
    }

    fn logit(self, rng: &mut Rng) -> f64 {
        match self {
            Kind::Std1 => rng.normal(),
            Kind::Std3 => 3.0 * rng.normal(),
            Kind::Peaked => 80.0 * rng.uniform() - 40.0,
            Kind::Temperature2 => 2.5 * rng.normal(),
            _ => 2.0 * rng.normal(),
        }
    }
}

/// Makes the values of a row pairwise distinct by stepping duplicates up by `step`.
///
/// Rounded draws collide often in long rows (~100 ties per 16 × 1000 case), and a tie makes
/// sort-based losses ambiguous: `uld`'s gradient depends on which of two equal probabilities
/// is matched with which teacher entry, so implementations that break ties differently would
/// disagree on a correct result. Generated rows therefore have no ties.
fn distinct(row: &mut [f64], step: f64) {
    let mut seen = std::collections::HashSet::with_capacity(row.len());
    for x in row.iter_mut() {
        while !seen.insert(x.to_bits()) {
            *x = round_to(*x + step, step);
        }
    }
}

fn logits(rng: &mut Rng, kind: Kind, n: usize, v: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|_| {
            let mut row: Vec<f64> = (0..v).map(|_| round_to(kind.logit(rng), 1e-4)).collect();
            distinct(&mut row, 1e-4);
            row
        })
        .collect()
}

/// `x + 1e-3·N(0, 1)` elementwise, rounded to 1e-6, made distinct.
fn perturbed(rng: &mut Rng, row: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = row.iter().map(|&x| round_to(x + 1e-3 * rng.normal(), 1e-6)).collect();
    distinct(&mut out, 1e-6);
    out
}

/// Common inputs of a row-wise case: student, teacher (vocabulary `vt`), labels, mask.
struct Rows {
    student: Vec<Vec<f64>>,
    teacher: Vec<Vec<f64>>,
    labels: Vec<i64>,
    mask: Vec<i64>,
}

fn rows(rng: &mut Rng, kind: Kind, vt: Option<usize>) -> Rows {
    let (n, v) = kind.shape();
    let student = logits(rng, kind, n, v);
    let teacher = if kind == Kind::NearIdentical && vt.is_none() {
        student.iter().map(|r| perturbed(rng, r)).collect()
    } else {
        logits(rng, kind, n, vt.unwrap_or(v))
    };
    let mut labels: Vec<i64> = (0..n).map(|_| rng.below(v) as i64).collect();
    let mut mask = vec![1i64; n];
    if kind == Kind::Masked {
        mask[1] = 0;
        mask[6] = 0;
        labels[3] = crate::rows::IGNORE_INDEX;
    }
    Rows { student, teacher, labels, mask }
}

fn row_inputs(r: &Rows) -> Vec<(&'static str, Value)> {
    vec![
        ("student_logits", mat(&r.student)),
        ("teacher_logits", mat(&r.teacher)),
        ("labels", int_arr(&r.labels)),
        ("mask", int_arr(&r.mask)),
    ]
}

fn case(name: &str, config: Value, inputs: Vec<(&'static str, Value)>) -> Value {
    json::object([
        ("name", Value::from(name)),
        ("config", config),
        ("inputs", json::object(inputs)),
        ("outputs", Value::Null),
    ])
}

/// `(name, kind, config)` of every case of a plain row-wise file.
fn table(loss: &str) -> Vec<(String, Kind, Value)> {
    let std = |cfg: Value, t2: Value| -> Vec<(String, Kind, Value)> {
        Kind::STANDARD
            .iter()
            .map(|&(k, name)| {
                (
                    name.to_string(),
                    k,
                    if k == Kind::Temperature2 { t2.clone() } else { cfg.clone() },
                )
            })
            .collect()
    };
    let extra = |name: &str, cfg: Value| (name.to_string(), Kind::Extra(6), cfg);
    match loss {
        "forward_kl" | "reverse_kl" => {
            let c = json!({"temperature": 1.0, "scale_by_t2": false});
            let mut t = std(c.clone(), c);
            t.remove(5);
            t.insert(
                5,
                (
                    "temperature_2_0".into(),
                    Kind::Temperature2,
                    json!({"temperature": 2.0, "scale_by_t2": true}),
                ),
            );
            t.insert(
                6,
                (
                    "temperature_2_1".into(),
                    Kind::Temperature2,
                    json!({"temperature": 2.0, "scale_by_t2": false}),
                ),
            );
            t
        }
        "hinton_kd" => {
            let mut t = std(
                json!({"alpha": 0.5, "temperature": 1.0}),
                json!({"alpha": 0.7, "temperature": 2.0}),
            );
            t.push(extra("alpha_1_temperature_4", json!({"alpha": 1.0, "temperature": 4.0})));
            t.push(extra("alpha_0", json!({"alpha": 0.0, "temperature": 3.0})));
            t
        }
        "gkd_jsd" => {
            let mut t = std(
                json!({"beta": 0.5, "temperature": 1.0}),
                json!({"beta": 0.5, "temperature": 2.0}),
            );
            t[1].2 = json!({"beta": 0.1, "temperature": 1.0});
            t[2].2 = json!({"beta": 0.9, "temperature": 1.0});
            t.push(extra("beta_0_forward_kl", json!({"beta": 0.0, "temperature": 1.0})));
            t.push(extra("beta_1_reverse_kl", json!({"beta": 1.0, "temperature": 1.0})));
            t.push(extra("beta_0_temperature_2", json!({"beta": 0.0, "temperature": 2.0})));
            t
        }
        "js" => {
            std(json!({"beta": 0.5, "temperature": 1.0}), json!({"beta": 0.5, "temperature": 2.0}))
        }
        "tvd" => std(json!({"temperature": 1.0}), json!({"temperature": 2.0})),
        "skew_forward_kl" | "skew_reverse_kl" => {
            let mut t = std(
                json!({"alpha": 0.1, "temperature": 1.0}),
                json!({"alpha": 0.1, "temperature": 2.0}),
            );
            t.push(extra("alpha_0.3", json!({"alpha": 0.3, "temperature": 1.0})));
            t.push(extra("alpha_0.05", json!({"alpha": 0.05, "temperature": 1.0})));
            t
        }
        "akl" => {
            let mut t =
                std(json!({"mu": 0.5, "temperature": 1.0}), json!({"mu": 0.5, "temperature": 2.0}));
            t.push(extra("mu_0.3", json!({"mu": 0.3, "temperature": 1.0})));
            t.push(extra("mu_0.8", json!({"mu": 0.8, "temperature": 1.0})));
            t
        }
        "taid" => {
            let ts = [0.4, 0.7, 0.4, 0.9, 0.55, 0.6, 0.4];
            let mut t = std(Value::Null, Value::Null);
            for (row, &tv) in t.iter_mut().zip(&ts) {
                let temp = if row.1 == Kind::Temperature2 { 2.0 } else { 1.0 };
                row.2 = json!({"t": tv, "temperature": temp});
            }
            t.push(extra("t_1", json!({"t": 1.0, "temperature": 1.0})));
            t.push(extra("t_0.2", json!({"t": 0.2, "temperature": 1.0})));
            t
        }
        "fdistill" => {
            let divs = [
                json!({"divergence": "kl", "temperature": 1.0}),
                json!({"divergence": "rkl", "temperature": 1.0}),
                json!({"divergence": "js", "beta": 0.5, "temperature": 1.0}),
                json!({"divergence": "tvd", "temperature": 1.0}),
            ];
            let mut t = Vec::new();
            for &(k, name) in &Kind::STANDARD[..5] {
                for (j, d) in divs.iter().enumerate() {
                    t.push((format!("{name}_{j}"), k, d.clone()));
                }
            }
            for (j, d) in divs[..3].iter().enumerate() {
                let mut d = d.clone();
                d["temperature"] = json!(2.0);
                t.push((format!("temperature_2_{j}"), Kind::Temperature2, d));
            }
            t.push(("large".into(), Kind::Large, divs[2].clone()));
            t.push(extra(
                "js_beta_0.1",
                json!({"divergence": "js", "beta": 0.1, "temperature": 1.0}),
            ));
            t
        }
        "alpha_divergence" => {
            let mut t = std(
                json!({"alpha": 0.5, "temperature": 1.0}),
                json!({"alpha": 0.5, "temperature": 2.0}),
            );
            for (name, a) in [
                ("alpha_1_forward_kl", 1.0),
                ("alpha_0_reverse_kl", 0.0),
                ("alpha_0.9", 0.9),
                ("alpha_1.5", 1.5),
            ] {
                t.push(extra(name, json!({"alpha": a, "temperature": 1.0})));
            }
            t
        }
        "ab_divergence" => {
            let c = |a: f64, b: f64, temp: f64| json!({"alpha": a, "beta": b, "temperature": temp});
            let mut t = std(c(0.2, 0.7, 1.0), c(0.2, 0.7, 2.0));
            for (name, a, b) in [
                ("alpha_0.5_beta_0.5", 0.5, 0.5),
                ("alpha_0_beta_0", 0.0, 0.0),
                ("alpha_0", 0.0, 0.6),
                ("beta_0", 0.8, 0.0),
                ("alpha_plus_beta_0", 0.6, -0.6),
                ("alpha_1.2_beta_-0.3", 1.2, -0.3),
            ] {
                t.push(extra(name, c(a, b, 1.0)));
            }
            t
        }
        "dkd" => {
            let c = |a: f64, b: f64, temp: f64, w: f64| json!({"alpha": a, "beta": b, "temperature": temp, "warmup_factor": w});
            let mut t = std(c(1.0, 8.0, 4.0, 1.0), c(1.0, 2.0, 2.0, 1.0));
            t[1].2 = c(1.0, 0.5, 1.0, 1.0);
            t[4].2 = c(1.0, 8.0, 4.0, 0.25);
            t.push(extra("alpha_0.5_beta_2_T1", c(0.5, 2.0, 1.0, 1.0)));
            t
        }
        "atkd" => {
            let c = |a: f64, temp: f64| json!({"alpha": a, "student_temperature": temp, "teacher_temperature": temp});
            let mut t = std(c(0.2, 1.0), c(0.2, 2.0));
            t.push(("alpha_0.5".into(), Kind::Extra(9), c(0.5, 1.0)));
            t
        }
        "uld" => {
            let c =
                |ts: f64, tt: f64| json!({"student_temperature": ts, "teacher_temperature": tt});
            let mut t = std(c(1.0, 1.0), c(2.0, 2.0));
            t.push(extra("different_temperatures", c(1.0, 2.0)));
            t
        }
        "delta_kd" => {
            let c = |a: f64, temp: f64, l: f64| json!({"alpha": a, "temperature": temp, "lambda_sft": l});
            let mut t = std(c(1.0, 1.0, 0.0), c(1.0, 2.0, 0.0));
            t.push(extra("alpha_0.5_with_sft", c(0.5, 1.0, 0.5)));
            t.push(extra("zero_student_base", c(1.0, 1.0, 0.0)));
            t
        }
        _ => Vec::new(),
    }
}

/// Teacher vocabulary of a `uld` case (it differs from the student's in three cases).
fn uld_teacher_vocab(kind: Kind) -> Option<usize> {
    match kind {
        Kind::Std1 => Some(14),
        Kind::Masked => Some(9),
        Kind::Large => Some(1200),
        _ => None,
    }
}

fn row_cases(rng: &mut Rng, loss: &str) -> Vec<Value> {
    table(loss)
        .into_iter()
        .map(|(name, kind, config)| {
            let vt = if loss == "uld" { uld_teacher_vocab(kind) } else { None };
            let r = rows(rng, kind, vt);
            let mut inputs = row_inputs(&r);
            if loss == "delta_kd" {
                let (n, v) = kind.shape();
                inputs.push(("teacher_base_logits", mat(&logits(rng, kind, n, v))));
                let sb = if name == "zero_student_base" {
                    vec![vec![0.0; v]; n]
                } else {
                    logits(rng, kind, n, v)
                };
                inputs.push(("student_base_logits", mat(&sb)));
            }
            case(&name, config, inputs)
        })
        .collect()
}

/// Top-K ids (by descending teacher probability) and their log-probabilities at T = 1, with
/// at least 1e-4 of mass left outside the top K (the teacher row is flattened until so).
fn topk(teacher: &[f64], k: usize) -> (Vec<i64>, Vec<f64>) {
    let mut row = teacher.to_vec();
    loop {
        let lp = log_softmax_f64(&row, 1.0);
        let mut order: Vec<usize> = (0..lp.len()).collect();
        order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
        order.truncate(k);
        let mass: f64 = order.iter().map(|&i| lp[i].exp()).sum();
        if 1.0 - mass >= 1e-4 {
            return (
                order.iter().map(|&i| i as i64).collect(),
                order.iter().map(|&i| lp[i]).collect(),
            );
        }
        row.iter_mut().for_each(|x| *x *= 0.5);
    }
}

fn topk_cases(rng: &mut Rng) -> Vec<Value> {
    let convs = ["renorm_teacher", "renorm_both", "tail_bucket"];
    let mut out = Vec::new();
    for &(kind, name) in &Kind::STANDARD {
        let large = kind == Kind::Large;
        let r = rows(rng, kind, None);
        let k = if large { 50 } else { 5 };
        let (ids, lps): (Vec<_>, Vec<_>) = r.teacher.iter().map(|t| topk(t, k)).unzip();
        let temp = if kind == Kind::Temperature2 { 2.0 } else { 1.0 };
        for conv in convs {
            if large && conv == "renorm_both" {
                continue;
            }
            let config =
                json!({"convention": conv, "temperature": temp, "scale_by_t2": temp != 1.0});
            let inputs = vec![
                ("student_logits", mat(&r.student)),
                ("teacher_topk_ids", int_mat(&ids)),
                ("teacher_topk_logprobs", mat(&lps)),
                ("labels", int_arr(&r.labels)),
                ("mask", int_arr(&r.mask)),
            ];
            out.push(case(&format!("{name}_{conv}"), config, inputs));
        }
    }
    out
}

fn minillm_cases(rng: &mut Rng) -> Vec<Value> {
    let base = json!({
        "temperature": 1.0, "gamma": 0.95, "cliprange": 0.2, "reward_scaling": 0.5,
        "cliprange_reward": 100.0, "teacher_mixed_alpha": 0.2, "single_step_reg": true,
        "whitening_variance": "population"
    });
    let with = |pairs: &[(&str, Value)]| {
        let mut c = base.clone();
        for (k, v) in pairs {
            c[*k] = v.clone();
        }
        c
    };
    // (name, config, (L, V), logit kind, whether old_student_logits differ)
    type Row = (&'static str, Value, (usize, usize), Kind, bool);
    let table: Vec<Row> = vec![
        ("script_defaults", base.clone(), (6, 13), Kind::Extra(0), false),
        (
            "argument_defaults_no_mix",
            with(&[
                ("reward_scaling", Value::Null),
                ("cliprange_reward", json!(1.0)),
                ("teacher_mixed_alpha", Value::Null),
                ("whitening_variance", json!("unbiased")),
            ]),
            (5, 9),
            Kind::Extra(0),
            false,
        ),
        ("old_policy_differs", base.clone(), (6, 11), Kind::Extra(0), true),
        ("temperature_2", with(&[("temperature", json!(2.0))]), (5, 12), Kind::Extra(0), false),
        ("peaked", base.clone(), (5, 10), Kind::Peaked, false),
        ("near_identical", base.clone(), (5, 9), Kind::NearIdentical, false),
        (
            "no_single_step_reg",
            with(&[("gamma", json!(0.9)), ("single_step_reg", json!(false))]),
            (4, 8),
            Kind::Extra(0),
            true,
        ),
        ("large", base.clone(), (8, 1000), Kind::Extra(0), false),
    ];
    table
        .into_iter()
        .map(|(name, config, (l, v), kind, old)| {
            let draw = |rng: &mut Rng| -> Vec<Vec<Vec<f64>>> {
                (0..2).map(|_| logits(rng, kind, l, v)).collect()
            };
            let student = draw(rng);
            let teacher = if kind == Kind::NearIdentical {
                student.iter().map(|b| b.iter().map(|r| perturbed(rng, r)).collect()).collect()
            } else {
                draw(rng)
            };
            let tokens: Vec<Vec<i64>> =
                (0..2).map(|_| (0..l).map(|_| rng.below(v) as i64).collect()).collect();
            let mask: Vec<Vec<i64>> =
                vec![vec![1; l], (0..l).map(|t| i64::from(t + 2 < l)).collect()];
            let mut inputs = vec![
                ("student_logits", Value::Array(student.iter().map(|b| mat(b)).collect())),
                ("teacher_logits", Value::Array(teacher.iter().map(|b| mat(b)).collect())),
                ("tokens", int_mat(&tokens)),
                ("mask", int_mat(&mask)),
            ];
            if old {
                let o: Vec<Value> = student
                    .iter()
                    .map(|b| {
                        let rows: Vec<Vec<f64>> = b
                            .iter()
                            .map(|r| {
                                r.iter().map(|&x| round_to(x + 0.5 * rng.normal(), 1e-4)).collect()
                            })
                            .collect();
                        mat(&rows)
                    })
                    .collect();
                inputs.push(("old_student_logits", Value::Array(o)));
            }
            case(name, config, inputs)
        })
        .collect()
}

/// TAID schedule replays: the committed four configurations, with fresh loss curves.
fn taid_schedules(rng: &mut Rng) -> Vec<Value> {
    let configs = [
        (
            "defaults_decreasing",
            json!({"t_start": 0.4, "t_end": 1.0, "alpha": 0.0005, "beta": 0.99, "num_train_steps": 20}),
            false,
        ),
        (
            "fast_adaptive_clamped",
            json!({"t_start": 0.2, "t_end": 0.9, "alpha": 0.3, "beta": 0.9, "num_train_steps": 1000}),
            false,
        ),
        (
            "noisy_non_monotone",
            json!({"t_start": 0.4, "t_end": 1.0, "alpha": 0.05, "beta": 0.5, "num_train_steps": 50}),
            true,
        ),
        (
            "adaptive_disabled",
            json!({"t_start": 0.4, "t_end": 1.0, "alpha": 0.0005, "beta": 0.99, "num_train_steps": 12, "disable_adaptive": true}),
            false,
        ),
    ];
    configs
        .into_iter()
        .map(|(name, config, noisy)| {
            let mut loss = 3.5;
            let losses: Vec<f64> = (0..14)
                .map(|_| {
                    let l = if noisy { 1.5 + 1.0 * rng.uniform() } else { loss };
                    loss *= 0.85 + 0.1 * rng.uniform();
                    round_to(l, 1e-6)
                })
                .collect();
            json::object([
                ("name", Value::from(name)),
                ("config", config),
                ("losses", arr(&losses)),
                ("records", Value::Null),
            ])
        })
        .collect()
}

fn scaling_law_doc(rng: &mut Rng) -> Value {
    let points: Vec<Value> = (0..7)
        .map(|_| {
            let n_s = round_to(10f64.powf(8.0 + 2.0 * rng.uniform()) / 1e6, 1.0) * 1e6;
            let d_s = round_to(n_s * (10.0 + 60.0 * rng.uniform()) / 1e8, 1.0) * 1e8;
            let l_t = round_to(1.6 + 1.6 * rng.uniform(), 0.1);
            json!({"N_S": n_s, "D_S": d_s, "L_T": l_t, "L_S": null, "L_S_supervised": null})
        })
        .collect();
    json!({
        "format_version": 1,
        "loss": "scaling_law",
        "description": description("scaling_law"),
        "coefficients": {
            "E": 1.2, "A": 480.0, "B": 2100.0, "alpha": 0.38, "beta": 0.42, "gamma": 1.0,
            "A_prime": 520.0, "B_prime": 1900.0, "alpha_prime": 0.37, "beta_prime": 0.41,
            "gamma_prime": 1.0, "c0": 2.5, "c1": 0.6, "d1": 1.3, "f1": 1.2
        },
        "coefficients_note": "illustrative values, not a published fit",
        "points": points
    })
}

/// The one-line `description` of each file.
pub fn description(loss: &str) -> &'static str {
    match loss {
        "ab_divergence" => "ABKD alpha-beta divergence with its special cases",
        "akl" => {
            "w_head*KL(p||q) + w_tail*KL(q||p); weights from detached |p-q| over teacher head/tail split at cumulative mass mu"
        }
        "alpha_divergence" => {
            "Amari alpha-divergence (1 - sum p^a q^(1-a)) / (a(1-a)); a=1 -> KL(p||q), a=0 -> KL(q||p)"
        }
        "atkd" => {
            "teacher-uncertainty split at the lower median; alpha*mean_easy(NCKD) + (1-alpha)*mean_hard(TCKD+NCKD)"
        }
        "delta_kd" => {
            "(1-lambda_sft)*KL(softmax((z_sb + alpha*(z_t - z_tb))/T) || q^T) + lambda_sft*CE"
        }
        "dkd" => "warmup_factor*(alpha*T^2*TCKD + beta*T^2*NCKD), target class = label",
        "fdistill" => "f-DISTILL step-wise terms: kl, rkl, js(beta), tvd",
        "forward_kl" => "KL(p_teacher^T || q_student^T) per row; times T^2 when scale_by_t2",
        "gkd_jsd" => {
            "TRL generalized JSD: beta*KL(p||m)+(1-beta)*KL(q||m), m=beta*p+(1-beta)*q; beta=0 -> KL(p||q), beta=1 -> KL(q||p)"
        }
        "hinton_kd" => "alpha*T^2*KL(p^T||q^T) + (1-alpha)*CE(q^1, label)",
        "js" => "Jensen-Shannon divergence (generalized JSD with beta=0.5)",
        "minillm" => "MiniLLM token-level PPO objective with single-step reverse-KL regulariser",
        "reverse_kl" => "KL(q_student^T || p_teacher^T) per row; times T^2 when scale_by_t2",
        "scaling_law" => "Distillation scaling law L_S(N_S, D_S, L_T)",
        "skew_forward_kl" => "KL(p || alpha*p + (1-alpha)*q), mixture differentiated",
        "skew_reverse_kl" => "KL(q || (1-alpha)*p + alpha*q), mixture differentiated",
        "taid" => "-sum_v p_t(v) log q(v), p_t = softmax((1-t)*stopgrad(student) + t*teacher)",
        "topk_kl" => {
            "KL against a teacher given only by top-k log-probs; conventions renorm_teacher, renorm_both, tail_bucket"
        }
        "tvd" => "0.5*sum|p^T - q^T|",
        "uld" => {
            "sum_k |sort_desc(q)_k - sort_desc(p)_k| with zero padding to the larger vocabulary"
        }
        _ => "",
    }
}

/// Builds the document of one loss (inputs from `seed`, outputs recomputed).
///
/// Each loss draws from its own stream (`seed` mixed with the loss's position in
/// [`LOSS_NAMES`](crate::LOSS_NAMES)), so one file does not depend on the others.
///
/// # Errors
/// When `loss` is unknown.
pub fn document(loss: &str, seed: u64) -> Result<Value> {
    let pos = crate::LOSS_NAMES
        .iter()
        .position(|&l| l == loss)
        .ok_or_else(|| GoldenError::UnknownLoss { got: loss.to_string() })?;
    let mut rng = Rng::new(seed.wrapping_mul(0x100).wrapping_add(pos as u64));
    let skeleton = match loss {
        "scaling_law" => scaling_law_doc(&mut rng),
        _ => {
            let cases = match loss {
                "topk_kl" => topk_cases(&mut rng),
                "minillm" => minillm_cases(&mut rng),
                _ => row_cases(&mut rng, loss),
            };
            let mut doc = json!({
                "format_version": 1,
                "loss": loss,
                "description": description(loss),
                "cases": cases,
            });
            if loss == "taid" {
                doc["schedules"] = Value::Array(taid_schedules(&mut rng));
            }
            doc
        }
    };
    crate::recompute(&skeleton)
}

/// Writes one freshly generated `<loss>.json` per loss into `dir` (created if needed) and
/// returns the paths written.
///
/// # Errors
/// When the directory or a file cannot be written.
pub fn generate_dir(dir: &Path, seed: u64) -> Result<Vec<PathBuf>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GoldenError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::with_capacity(crate::LOSS_NAMES.len());
    for loss in crate::LOSS_NAMES {
        let doc = document(loss, seed)?;
        let path = dir.join(format!("{loss}.json"));
        let text = serde_json::to_string(&doc)
            .map_err(|source| GoldenError::Json { path: path.clone(), source })?;
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}
