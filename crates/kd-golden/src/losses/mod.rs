//! One module per golden file: each recomputes a case's `outputs` from its `inputs` and
//! `config`, following the formula in its module docs. `taid` and `scaling_law` also carry the
//! file-level parts of their files (schedule replays, law points).

use serde_json::Value;

use crate::error::{GoldenError, Result};
use crate::json::Case;

/// Declares the loss modules once, and from that one list [`LOSS_NAMES`] and the dispatch of
/// [`case_outputs`]. `cases` are the files of row cases, in generation order (a file's seed
/// follows its position); `other` the files with no cases.
macro_rules! golden_losses {
    (cases { $($id:ident),* $(,)? } other { $($other:ident),* $(,)? }) => {
        $(pub mod $id;)*
        $(pub mod $other;)*

        /// Every golden file this crate knows, by its `loss` field (= file stem).
        pub const LOSS_NAMES: &[&str] = &[$(stringify!($id),)* $(stringify!($other),)*];

        /// Recomputes the `outputs` object of one case of the file whose `loss` is `loss`.
        ///
        /// # Errors
        /// When `loss` is unknown (or has no cases, as `scaling_law`), or the case is malformed.
        pub fn case_outputs(loss: &str, case: &Case<'_>) -> Result<Value> {
            match loss {
                $(stringify!($id) => $id::outputs(case),)*
                other => Err(GoldenError::UnknownLoss { got: other.to_string() }),
            }
        }
    };
}

golden_losses! {
    cases {
        forward_kl,
        reverse_kl,
        hinton_kd,
        gkd_jsd,
        js,
        tvd,
        skew_forward_kl,
        skew_reverse_kl,
        akl,
        taid,
        fdistill,
        alpha_divergence,
        ab_divergence,
        dkd,
        atkd,
        uld,
        delta_kd,
        topk_kl,
        minillm,
    }
    other { scaling_law }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::case_outputs;
    use crate::generate::document;
    use crate::json::Case;

    /// The first case (`random_small_std1`, or `script_defaults`) of a generated file.
    fn first_case(loss: &str) -> Value {
        document(loss, 1).expect("generate")["cases"][0].clone()
    }

    fn loss_mean(loss: &str, case: &Value) -> f64 {
        case_outputs(loss, &Case::new(case)).expect("outputs")["loss_mean"]
            .as_f64()
            .expect("a number")
    }

    /// Central finite differences agree with the tape wherever no stop-gradient is involved
    /// (akl's weights, taid's target and minillm's old policy are detached by definition).
    #[test]
    fn gradients_match_finite_differences() {
        let losses = [
            "forward_kl",
            "reverse_kl",
            "hinton_kd",
            "gkd_jsd",
            "js",
            "tvd",
            "skew_forward_kl",
            "skew_reverse_kl",
            "fdistill",
            "alpha_divergence",
            "ab_divergence",
            "dkd",
            "atkd",
            "uld",
            "delta_kd",
            "topk_kl",
        ];
        for loss in losses {
            let case = first_case(loss);
            let out = case_outputs(loss, &Case::new(&case)).expect("outputs");
            let grad = &out["grad_student_logits"];
            let rows = case["inputs"]["student_logits"].as_array().expect("rows").len();
            let cols = case["inputs"]["student_logits"][0].as_array().expect("row").len();
            let h = 1e-6;
            for i in 0..rows {
                for j in 0..cols {
                    let x = case["inputs"]["student_logits"][i][j].as_f64().expect("a number");
                    let mut plus = case.clone();
                    plus["inputs"]["student_logits"][i][j] = json!(x + h);
                    let mut minus = case.clone();
                    minus["inputs"]["student_logits"][i][j] = json!(x - h);
                    let fd = (loss_mean(loss, &plus) - loss_mean(loss, &minus)) / (2.0 * h);
                    let g = grad[i][j].as_f64().expect("a number");
                    assert!(
                        (fd - g).abs() < 1e-7 * (1.0 + g.abs()),
                        "{loss}[{i}][{j}]: tape {g:e}, finite differences {fd:e}"
                    );
                }
            }
        }
    }

    /// Divergences vanish, with their gradients, when the teacher equals the student.
    #[test]
    fn equal_inputs_give_zero() {
        let cases: [(&str, Value); 10] = [
            ("forward_kl", json!({"temperature": 2.0, "scale_by_t2": true})),
            ("reverse_kl", json!({"temperature": 1.0, "scale_by_t2": false})),
            ("gkd_jsd", json!({"beta": 0.3, "temperature": 1.0})),
            ("tvd", json!({"temperature": 1.0})),
            ("skew_forward_kl", json!({"alpha": 0.1, "temperature": 1.0})),
            ("skew_reverse_kl", json!({"alpha": 0.1, "temperature": 1.0})),
            ("fdistill", json!({"divergence": "js", "beta": 0.5, "temperature": 1.0})),
            ("alpha_divergence", json!({"alpha": 0.5, "temperature": 1.0})),
            ("ab_divergence", json!({"alpha": 0.6, "beta": -0.6, "temperature": 1.0})),
            ("uld", json!({"student_temperature": 1.5, "teacher_temperature": 1.5})),
        ];
        for (loss, config) in cases {
            let mut case = first_case("forward_kl");
            case["config"] = config;
            case["inputs"]["teacher_logits"] = case["inputs"]["student_logits"].clone();
            let out = case_outputs(loss, &Case::new(&case)).expect("outputs");
            let worst = |v: &Value| -> f64 {
                v.as_array()
                    .expect("array")
                    .iter()
                    .flat_map(|r| r.as_array().cloned().unwrap_or_else(|| vec![r.clone()]))
                    .map(|x| x.as_f64().expect("a number").abs())
                    .fold(0.0, f64::max)
            };
            assert!(worst(&out["per_row"]) < 1e-13, "{loss}: {}", out["per_row"]);
            assert!(worst(&out["grad_student_logits"]) < 1e-13, "{loss}: gradient");
        }
    }

    /// Hand-checked: two classes, uniform teacher, student logits (0, ln 3) → q = (¼, ¾).
    #[test]
    fn forward_kl_two_classes_by_hand() {
        let case = json!({
            "name": "hand", "config": {"temperature": 1.0, "scale_by_t2": false},
            "inputs": {"student_logits": [[0.0, 3f64.ln()]], "teacher_logits": [[0.0, 0.0]],
                       "labels": [0], "mask": [1]}
        });
        let out = case_outputs("forward_kl", &Case::new(&case)).expect("outputs");
        // KL = ½ ln(½/¼) + ½ ln(½/¾) = ½ ln(4/3); gradient q − p = (−¼, ¼).
        let want = 0.5 * (4.0f64 / 3.0).ln();
        assert!((out["loss_mean"].as_f64().expect("a number") - want).abs() < 1e-15);
        assert!(
            (out["grad_student_logits"][0][0].as_f64().expect("a number") + 0.25).abs() < 1e-15
        );
        assert!(
            (out["grad_student_logits"][0][1].as_f64().expect("a number") - 0.25).abs() < 1e-15
        );
    }

    #[test]
    fn unknown_loss_and_option_are_errors() {
        let case = first_case("forward_kl");
        assert!(case_outputs("no_such_loss", &Case::new(&case)).is_err());
        let mut bad = first_case("fdistill");
        bad["config"]["divergence"] = json!("hellinger");
        assert!(case_outputs("fdistill", &Case::new(&bad)).is_err());
    }
}
