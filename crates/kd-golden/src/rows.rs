//! What every row-wise logit loss shares: reading the batch, log-softmax at a temperature,
//! KL between log-probability rows, and assembling `outputs` (per-row values, mean, sum,
//! gradient of the mean, per-row extras).

use serde_json::Value;

use crate::error::Result;
use crate::json::{self, Case};
use crate::tape::{Tape, Var};

/// Label value of an ignored row.
pub const IGNORE_INDEX: i64 = -100;

/// The common inputs of a row-wise case: `student_logits [N][V]`, `teacher_logits [N][V_t]`
/// (empty rows for `topk_kl`), `labels [N]`, `mask [N]`.
#[derive(Debug, Clone)]
pub struct RowBatch {
    /// Student logits, one row per position.
    pub student: Vec<Vec<f64>>,
    /// Teacher logits (empty when the case has none).
    pub teacher: Vec<Vec<f64>>,
    /// Target class per row; `-100` = ignored row.
    pub labels: Vec<i64>,
    /// 1 = counted row, 0 = ignored row.
    pub mask: Vec<i64>,
}

impl RowBatch {
    /// Reads the common inputs of a case.
    ///
    /// # Errors
    /// When a field is missing, malformed, or the row counts disagree.
    pub fn read(case: &Case<'_>) -> Result<Self> {
        let student = case.mat("inputs.student_logits")?;
        let teacher = if case.has("inputs.teacher_logits") {
            case.mat("inputs.teacher_logits")?
        } else {
            Vec::new()
        };
        let labels = case.ints("inputs.labels")?;
        let mask = case.ints("inputs.mask")?;
        let n = student.len();
        if labels.len() != n || mask.len() != n || !(teacher.is_empty() || teacher.len() == n) {
            return Err(case.invalid(
                "inputs",
                "student_logits, teacher_logits, labels and mask with one entry per row",
            ));
        }
        Ok(Self { student, teacher, labels, mask })
    }

    /// Number of rows `N`.
    pub fn rows(&self) -> usize {
        self.student.len()
    }

    /// A row counts iff `mask == 1` and `label != -100`.
    pub fn valid(&self, i: usize) -> bool {
        self.mask[i] == 1 && self.labels[i] != IGNORE_INDEX
    }

    /// Number of counted rows.
    pub fn n_valid(&self) -> usize {
        (0..self.rows()).filter(|&i| self.valid(i)).count()
    }

    /// The label of a counted row as a class index.
    ///
    /// # Errors
    /// When the label is outside `0..V`.
    pub fn label(&self, case: &Case<'_>, i: usize) -> Result<usize> {
        let v = self.student[i].len();
        usize::try_from(self.labels[i]).ok().filter(|&y| y < v).ok_or_else(|| {
            case.invalid(
                "inputs.labels",
                "a class index below the vocabulary size on every valid row",
            )
        })
    }
}

/// `log_softmax(xs / temperature)` on the tape.
pub fn log_softmax<'t>(tape: &'t Tape, xs: &[Var<'t>], temperature: f64) -> Vec<Var<'t>> {
    let z: Vec<Var<'t>> = xs.iter().map(|&x| x / temperature).collect();
    let lse = tape.logsumexp(&z);
    z.into_iter().map(|x| x - lse).collect()
}

/// `log_softmax(xs / temperature)` on plain values (constants: the teacher side).
pub fn log_softmax_f64(xs: &[f64], temperature: f64) -> Vec<f64> {
    let z: Vec<f64> = xs.iter().map(|&x| x / temperature).collect();
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    let lse = m + z.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
    z.into_iter().map(|x| x - lse).collect()
}

/// Leaves for a row of constants.
pub fn consts<'t>(tape: &'t Tape, xs: &[f64]) -> Vec<Var<'t>> {
    tape.vars(xs)
}

/// `KL(a‖b) = Σ e^{la} (la − lb)` from log-probability rows.
pub fn kl<'t>(tape: &'t Tape, la: &[Var<'t>], lb: &[Var<'t>]) -> Var<'t> {
    let terms: Vec<Var<'t>> = la.iter().zip(lb).map(|(&a, &b)| a.exp() * (a - b)).collect();
    tape.sum(&terms)
}

/// `−Σ e^{la} lb` (cross-entropy of `b` under `a`) from log-probability rows.
pub fn cross_entropy<'t>(tape: &'t Tape, la: &[Var<'t>], lb: &[Var<'t>]) -> Var<'t> {
    let terms: Vec<Var<'t>> = la.iter().zip(lb).map(|(&a, &b)| a.exp() * b).collect();
    -tape.sum(&terms)
}

/// `log(w_a e^{la} + w_b e^{lb})` elementwise, through a two-term logsumexp.
pub fn log_mix<'t>(
    tape: &'t Tape,
    la: &[Var<'t>],
    wa: f64,
    lb: &[Var<'t>],
    wb: f64,
) -> Vec<Var<'t>> {
    let (ca, cb) = (wa.ln(), wb.ln());
    la.iter().zip(lb).map(|(&a, &b)| tape.logsumexp(&[a + ca, b + cb])).collect()
}

/// A per-row extra: the row's value on counted rows, 0 on ignored rows.
#[derive(Debug, Clone)]
pub struct RowExtra {
    name: &'static str,
    values: Vec<f64>,
    integer: bool,
}

impl RowExtra {
    /// A float extra with `n` rows.
    pub fn new(name: &'static str, n: usize) -> Self {
        Self { name, values: vec![0.0; n], integer: false }
    }

    /// An integer extra with `n` rows (written as JSON integers).
    pub fn ints(name: &'static str, n: usize) -> Self {
        Self { name, values: vec![0.0; n], integer: true }
    }

    /// Sets row `i`.
    pub fn set(&mut self, i: usize, v: f64) {
        self.values[i] = v;
    }

    /// The `(name, JSON value)` pair.
    pub fn into_pair(self) -> (String, Value) {
        let v = if self.integer {
            json::int_arr(&self.values.iter().map(|&x| x as i64).collect::<Vec<_>>())
        } else {
            json::arr(&self.values)
        };
        (self.name.to_string(), v)
    }
}

/// The loop of every plain row loss: the student rows go on the tape, and each valid row's
/// teacher and student log-probabilities at `temperature` (the teacher as constants) go to
/// `row(i, lp, lq)`; ignored rows get `None`. Returns what [`finish`] takes.
pub fn valid_rows<'t>(
    tape: &'t Tape,
    b: &RowBatch,
    temperature: f64,
    mut row: impl FnMut(usize, &[Var<'t>], &[Var<'t>]) -> Var<'t>,
) -> (Vec<Vec<Var<'t>>>, Vec<Option<Var<'t>>>) {
    let student: Vec<_> = b.student.iter().map(|r| tape.vars(r)).collect();
    let per_row = student
        .iter()
        .enumerate()
        .map(|(i, s)| {
            b.valid(i).then(|| {
                let lq = log_softmax(tape, s, temperature);
                let lp = log_softmax(tape, &consts(tape, &b.teacher[i]), temperature);
                row(i, &lp, &lq)
            })
        })
        .collect();
    (student, per_row)
}

/// Assembles a row-wise `outputs` object.
///
/// `per_row[i]` is `None` on ignored rows (written as 0). `loss_sum = Σ per_row`,
/// `loss_mean = loss_sum / n_valid`, and `grad_student_logits = ∂loss_mean/∂student`.
/// `extras` is omitted when empty.
pub fn finish<'t>(
    tape: &'t Tape,
    student: &[Vec<Var<'t>>],
    per_row: &[Option<Var<'t>>],
    extras: Vec<(String, Value)>,
) -> Value {
    let counted: Vec<Var<'t>> = per_row.iter().flatten().copied().collect();
    let n_valid = counted.len().max(1) as f64;
    let loss_sum = tape.sum(&counted);
    let loss_mean = loss_sum / n_valid;
    let grads = tape.backward(loss_mean);
    let grad: Vec<Vec<f64>> =
        student.iter().map(|row| row.iter().map(|&x| grads.wrt(x)).collect()).collect();
    let rows: Vec<f64> = per_row.iter().map(|v| v.map_or(0.0, Var::val)).collect();
    let mut out = vec![
        ("per_row".to_string(), json::arr(&rows)),
        ("loss_mean".to_string(), json::num(loss_mean.val())),
        ("loss_sum".to_string(), json::num(loss_sum.val())),
        ("grad_student_logits".to_string(), json::mat(&grad)),
    ];
    if !extras.is_empty() {
        out.push(("extras".to_string(), json::object(extras)));
    }
    json::object(out)
}
