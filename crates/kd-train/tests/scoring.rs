//! `kd_train::scoring`: the loss and its gradient against hand-derived and independent f64
//! values, the metrics on hand-computed confusion matrices, last-token pooling, a short
//! training run, and input errors.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_models::{LlamaConfig, ModelConfig, Tokenizer};
use kd_train::TrainError;
use kd_train::scoring::{
    ScoredAnswer, ScoringClassifier, ScoringLossConfig, ScoringSet, ScoringTrainConfig,
    evaluate_classifier, macro_f1, predict_logits, quadratic_weighted_kappa, read_scored_jsonl,
    scoring_kd_loss, scoring_metrics, train_classifier,
};

fn host2(t: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, k] = t.dims();
    let v = t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    v.chunks(k).map(<[f32]>::to_vec).collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

/// The loss and its gradient w.r.t. the student logits, from burn's autodiff.
fn loss_and_grad(
    s: &[Vec<f32>],
    labels: &[i64],
    t: Option<&[Vec<f32>]>,
    config: &ScoringLossConfig,
) -> (f64, Vec<Vec<f32>>) {
    let device = Device::flex().autodiff();
    let (b, k) = (s.len(), s[0].len());
    let flat = |m: &[Vec<f32>]| m.iter().flatten().copied().collect::<Vec<f32>>();
    let st = Tensor::<2>::from_data(TensorData::new(flat(s), [b, k]), &device).require_grad();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [b]), &device);
    let tt = t.map(|t| Tensor::<2>::from_data(TensorData::new(flat(t), [b, k]), &device));
    let loss = scoring_kd_loss(st.clone(), y, tt, config).unwrap();
    let value = f64::from(loss.clone().inner().into_scalar::<f32>());
    let grads = loss.backward();
    (value, host2(st.grad(&grads).unwrap()))
}

/// An independent f64 evaluation of the documented formula and its closed-form gradient.
fn reference(
    s: &[Vec<f32>],
    labels: &[i64],
    t: &[Vec<f32>],
    lambda: f64,
    temp: f64,
) -> (f64, Vec<Vec<f64>>) {
    let softmax = |x: &[f32], temp: f64| {
        let m = x.iter().map(|&v| f64::from(v) / temp).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|&v| (f64::from(v) / temp - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|v| v / z).collect::<Vec<f64>>()
    };
    let b = s.len() as f64;
    let (mut loss, mut grad) = (0.0, Vec::new());
    for i in 0..s.len() {
        let q = softmax(&s[i], 1.0);
        let qt = softmax(&s[i], temp);
        let p = softmax(&t[i], temp);
        let y = labels[i] as usize;
        let hard = -q[y].ln();
        let soft: f64 = -(0..q.len()).map(|k| p[k] * qt[k].ln()).sum::<f64>();
        loss += (hard + lambda * temp * temp * soft) / b;
        grad.push(
            (0..q.len())
                .map(|k| {
                    let onehot = if k == y { 1.0 } else { 0.0 };
                    ((q[k] - onehot) + lambda * temp * (qt[k] - p[k])) / b
                })
                .collect(),
        );
    }
    (loss, grad)
}

/// Two classes, equal logits: CE = ln 2, the soft CE against a uniform teacher = ln 2, so at
/// λ = 1, T = 1 the loss is 2 ln 2; the gradient is (q − y) + (q − p) = (−½, ½) + 0.
#[test]
fn loss_and_gradient_by_hand() {
    let s = vec![vec![0.0, 0.0]];
    let t = vec![vec![0.0, 0.0]];
    let (value, grad) = loss_and_grad(&s, &[0], Some(&t), &ScoringLossConfig::default());
    assert!(close(value, 2.0 * std::f64::consts::LN_2, 1e-6), "{value}");
    assert!(close(f64::from(grad[0][0]), -0.5, 1e-6) && close(f64::from(grad[0][1]), 0.5, 1e-6));

    // One class ahead by ln 3: q = (¾, ¼). Teacher (0, 0) at λ = 2, T = 1, label 1:
    // loss = −ln ¼ + 2·(−½ ln ¾ − ½ ln ¼) = ln 4 + ln(16/3) = ln(64/3).
    let s = vec![vec![3f32.ln(), 0.0]];
    let config = ScoringLossConfig { lambda: 2.0, temperature: 1.0 };
    let (value, grad) = loss_and_grad(&s, &[1], Some(&t), &config);
    let expected = (64.0f64 / 3.0).ln();
    assert!(close(value, expected, 1e-6), "{value} vs {expected}");
    // (q − y) + λ (q − p) = (¾, ¼ − 1) + 2 (¼, −¼) = (1.25, −1.25).
    assert!(close(f64::from(grad[0][0]), 1.25, 1e-5), "{grad:?}");
    assert!(close(f64::from(grad[0][1]), -1.25, 1e-5), "{grad:?}");
}

#[test]
fn loss_and_gradient_match_an_independent_f64_formula() {
    let s = vec![vec![2.0, 0.0, -1.0, 0.5], vec![0.0, 1.0, 0.0, -3.0], vec![-1.0, 0.2, 4.0, 1.0]];
    let t = vec![vec![1.0, 1.0, -2.0, 0.0], vec![0.0, 2.0, 0.0, 1.0], vec![3.0, -1.0, 0.0, 2.0]];
    let labels = [0, 2, 3];
    for (lambda, temp) in [(0.5, 2.0), (1.0, 1.0), (3.0, 0.5)] {
        let config = ScoringLossConfig { lambda, temperature: temp };
        let (value, grad) = loss_and_grad(&s, &labels, Some(&t), &config);
        let (want, want_grad) = reference(&s, &labels, &t, lambda, temp);
        assert!(close(value, want, 1e-5), "λ {lambda} T {temp}: {value} vs {want}");
        for (g, w) in grad.iter().flatten().zip(want_grad.iter().flatten()) {
            assert!(
                close(f64::from(*g), *w, 1e-4),
                "λ {lambda} T {temp}: {grad:?} vs {want_grad:?}"
            );
        }
    }
}

#[test]
fn lambda_zero_is_plain_cross_entropy() {
    let s = vec![vec![2.0, 0.0, -1.0], vec![0.3, -0.2, 1.0]];
    let t = vec![vec![-5.0, 9.0, 0.0], vec![4.0, 0.0, 0.0]];
    let labels = [1, 2];
    let label_only = ScoringLossConfig { lambda: 0.0, temperature: 3.0 };
    let (with_teacher, g1) = loss_and_grad(&s, &labels, Some(&t), &label_only);
    let (without, g2) = loss_and_grad(&s, &labels, None, &label_only);
    assert_eq!(with_teacher, without);
    assert_eq!(g1, g2);
    // burn's own cross-entropy of the same logits.
    let device = Device::flex();
    let logits = Tensor::<2>::from_floats([[2.0, 0.0, -1.0], [0.3, -0.2, 1.0]], &device);
    let targets = Tensor::<1, Int>::from_ints([1, 2], &device);
    let ce = burn::nn::loss::CrossEntropyLossConfig::new().init(&device).forward(logits, targets);
    assert!(close(without, f64::from(ce.into_scalar::<f32>()), 1e-6));
    // And the f64 formula at λ = 0.
    assert!(close(without, reference(&s, &labels, &t, 0.0, 1.0).0, 1e-6));
}

#[test]
fn loss_rejects_bad_inputs() {
    let device = Device::flex();
    let s = Tensor::<2>::zeros([2, 3], &device);
    let y = Tensor::<1, Int>::from_ints([0, 1], &device);
    let kd = ScoringLossConfig::default();
    let no_teacher = scoring_kd_loss(s.clone(), y.clone(), None, &kd).unwrap_err();
    assert!(matches!(no_teacher, TrainError::Scoring { .. }), "{no_teacher}");
    let wrong_classes = Tensor::<2>::zeros([2, 4], &device);
    let e = scoring_kd_loss(s.clone(), y.clone(), Some(wrong_classes), &kd).unwrap_err();
    assert!(e.to_string().contains("teacher logits"), "{e}");
    let short = Tensor::<1, Int>::from_ints([0], &device);
    assert!(scoring_kd_loss(s.clone(), short, None, &kd).is_err());
    let bad_t = ScoringLossConfig { lambda: 1.0, temperature: -1.0 };
    let e = scoring_kd_loss(s, y, None, &bad_t).unwrap_err();
    assert!(matches!(e, TrainError::InvalidConfig { name: "temperature", .. }), "{e}");
}

/// Hand-computed: references (0,0,1,1,2,2), predictions (0,1,1,1,2,0).
/// confusion = [[1,1,0],[0,2,0],[1,0,1]]; F1_0 = 2/(2+1+1) = ½, F1_1 = 4/(4+1) = 0.8,
/// F1_2 = 2/(2+0+1) = ⅔; macro = (½ + 0.8 + ⅔)/3. QWK: w = (0, ¼, 1; ¼, 0, ¼; 1, ¼, 0),
/// Σ w O = ¼·1 + 1·1 = 1.25; rows (2,2,2), cols (2,3,1), N = 6, E = r c / 6:
/// Σ w E = [¼·(2·3) + 1·(2·1) + ¼·(2·2) + ¼·(2·1) + 1·(2·2) + ¼·(2·3)] / 6 = 10.5/6 = 1.75,
/// QWK = 1 − 1.25/1.75 = 2/7.
#[test]
fn metrics_by_hand() {
    let m = scoring_metrics(&[0, 0, 1, 1, 2, 2], &[0, 1, 1, 1, 2, 0], 3).unwrap();
    assert_eq!(m.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
    assert!(close(m.accuracy, 4.0 / 6.0, 1e-12));
    let f1 = [0.5, 0.8, 2.0 / 3.0];
    for (got, want) in m.per_class_f1.iter().zip(f1) {
        assert!(close(*got, want, 1e-12), "{:?}", m.per_class_f1);
    }
    assert!(close(m.macro_f1, (0.5 + 0.8 + 2.0 / 3.0) / 3.0, 1e-12));
    assert!(close(m.qwk, 2.0 / 7.0, 1e-12), "{}", m.qwk);
    assert_eq!(m.examples, 6);
}

/// Class 2 occurs but is never predicted: its F1 is 0 and counts in the macro mean; class 3
/// never occurs and is never predicted: it is left out of the mean.
#[test]
fn a_class_never_predicted_has_f1_zero() {
    let m = scoring_metrics(&[0, 1, 2, 2], &[0, 1, 1, 0], 4).unwrap();
    // F1_0 = 2/(2+1) = ⅔, F1_1 = 2/(2+1) = ⅔, F1_2 = 0 (TP 0, FN 2), F1_3 = 0 (absent).
    assert_eq!(m.per_class_f1[2], 0.0);
    assert_eq!(m.per_class_f1[3], 0.0);
    assert!(close(m.macro_f1, (2.0 / 3.0 + 2.0 / 3.0 + 0.0) / 3.0, 1e-12), "{}", m.macro_f1);
    let (macro_, _) = macro_f1(&m.confusion);
    assert_eq!(macro_, m.macro_f1);
}

#[test]
fn kappa_edges() {
    // Perfect agreement: 1. Complete reversal on 2 classes: −1.
    assert!(close(quadratic_weighted_kappa(&[vec![3, 0], vec![0, 2]]), 1.0, 1e-12));
    assert!(close(quadratic_weighted_kappa(&[vec![0, 2], vec![2, 0]]), -1.0, 1e-12));
    // Both raters always give the same single score: chance agreement is perfect, κ := 0.
    assert_eq!(quadratic_weighted_kappa(&[vec![0, 0], vec![0, 5]]), 0.0);
    // Constant predictions against varied references: no agreement beyond chance.
    let m = scoring_metrics(&[0, 1, 2, 3], &[1, 1, 1, 1], 4).unwrap();
    assert!(close(m.qwk, 0.0, 1e-12), "{}", m.qwk);
    assert!(scoring_metrics(&[0, 1], &[0], 2).is_err());
    assert!(scoring_metrics(&[0, 4], &[0, 1], 4).is_err());
    assert!(scoring_metrics(&[], &[], 4).is_err());
}

fn tiny_config(vocab: usize, positions: usize) -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: vocab,
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 8,
        max_position_embeddings: positions,
        ..Default::default()
    })
}

/// Whatever follows a row's last real token, its logits stay the same: the pooled position is
/// `len − 1` and attention is causal.
#[test]
fn pooling_takes_the_last_real_token() {
    let device = Device::flex();
    device.seed(1);
    let model = ScoringClassifier::init(&tiny_config(32, 16), 3, &device).unwrap();
    let ids = |rows: [[i64; 6]; 2]| {
        Tensor::<2, Int>::from_data(TensorData::new(rows.concat(), [2, 6]), &device)
    };
    let a = host2(model.forward(ids([[5, 6, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6]]), &[3, 6]));
    let b = host2(model.forward(ids([[5, 6, 7, 9, 31, 2], [1, 2, 3, 4, 5, 6]]), &[3, 6]));
    assert_eq!(a, b);
    // The row alone, unpadded, gives the same logits (up to the batch's matmul order).
    let alone = Tensor::<2, Int>::from_ints([[5, 6, 7]], &device);
    let c = host2(model.forward(alone, &[3]));
    for (x, y) in a[0].iter().zip(&c[0]) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {c:?}");
    }
    // A different last real token changes them: the pooled position is not the padding.
    let d = host2(model.forward(ids([[5, 6, 8, 0, 0, 0], [1, 2, 3, 4, 5, 6]]), &[3, 6]));
    assert_ne!(a[0], d[0]);
    assert_eq!(a[1], d[1]);
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(assets()).unwrap()
}

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kd-cli/assets")
}

/// Scores that a 1-layer model can learn fast: the score is the last word of the answer.
fn toy_rows(n: usize) -> Vec<ScoredAnswer> {
    let words = ["zero", "one", "two"];
    (0..n)
        .map(|i| ScoredAnswer {
            question: format!("Tom had {} apples.", i % 7),
            answer: format!("The answer is {}. {}", i % 5, words[i % 3]),
            score: i % 3,
        })
        .collect()
}

/// A few dozen steps of label-only training lower the loss and beat chance; KD from the
/// trained model's own logits runs too and stays finite.
#[test]
fn training_lowers_the_loss() {
    let device = Device::flex();
    device.seed(3);
    let tok = tokenizer();
    let set = ScoringSet::encode(&toy_rows(48), &tok, 3, 64).unwrap();
    let model = ScoringClassifier::init(&tiny_config(512, 64), 3, &device).unwrap();
    let config = ScoringTrainConfig {
        steps: 40,
        batch_size: 8,
        lr: 5e-3,
        warmup_steps: 4,
        loss: ScoringLossConfig { lambda: 0.0, temperature: 1.0 },
        ..Default::default()
    };
    let mut seen = Vec::new();
    let (model, report) =
        train_classifier(model, &set, None, &config, &device, |step, _| seen.push(step)).unwrap();
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    let first: f64 = report.losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = report.losses[35..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.5 * first, "loss {first} → {last}");
    let metrics = evaluate_classifier(&model, &set, 16, &device).unwrap();
    assert!(metrics.accuracy > 0.9, "{metrics:?}");

    let teacher = predict_logits(&model, &set, 16, &device).unwrap();
    assert_eq!(teacher.len(), set.len());
    let student = ScoringClassifier::init(&tiny_config(512, 64), 3, &device).unwrap();
    let kd = ScoringTrainConfig {
        steps: 5,
        loss: ScoringLossConfig { lambda: 1.0, temperature: 2.0 },
        ..config
    };
    let (_, report) =
        train_classifier(student, &set, Some(&teacher), &kd, &device, |_, _| {}).unwrap();
    assert!(report.losses.iter().all(|l| l.is_finite()));
}

#[test]
fn training_rejects_what_does_not_fit() {
    let device = Device::flex();
    let tok = tokenizer();
    let set = ScoringSet::encode(&toy_rows(6), &tok, 3, 64).unwrap();
    let kd = ScoringTrainConfig { steps: 1, batch_size: 2, ..Default::default() };
    let model = || ScoringClassifier::init(&tiny_config(512, 64), 3, &device).unwrap();
    // λ > 0 without teacher logits.
    let e = train_classifier(model(), &set, None, &kd, &device, |_, _| {}).unwrap_err();
    assert!(matches!(e, TrainError::Scoring { .. }), "{e}");
    // Teacher logits of another class count, or another row count.
    let four = vec![vec![0.0; 4]; set.len()];
    let e = train_classifier(model(), &set, Some(&four), &kd, &device, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("teacher classes"), "{e}");
    let short = vec![vec![0.0; 3]; 2];
    assert!(train_classifier(model(), &set, Some(&short), &kd, &device, |_, _| {}).is_err());
    let nan = vec![vec![f32::NAN; 3]; set.len()];
    assert!(train_classifier(model(), &set, Some(&nan), &kd, &device, |_, _| {}).is_err());
    // A student with another number of classes.
    let four_classes = ScoringClassifier::init(&tiny_config(512, 64), 4, &device).unwrap();
    let e = train_classifier(four_classes, &set, None, &kd, &device, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("classes"), "{e}");
    // Rows longer than the model's positions.
    let short_model = ScoringClassifier::init(&tiny_config(512, 8), 3, &device).unwrap();
    let e = predict_logits(&short_model, &set, 4, &device).unwrap_err();
    assert!(e.to_string().contains("positions"), "{e}");
    // Token ids beyond the model's vocabulary (another tokenizer).
    let small_vocab = ScoringClassifier::init(&tiny_config(32, 64), 3, &device).unwrap();
    let e = predict_logits(&small_vocab, &set, 4, &device).unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
    // Hand-built sets with a label outside the classes, or no rows.
    let mut bad = set.clone();
    bad.labels[0] = 7;
    let label_only = ScoringTrainConfig {
        loss: ScoringLossConfig { lambda: 0.0, temperature: 1.0 },
        ..kd.clone()
    };
    let e = train_classifier(model(), &bad, None, &label_only, &device, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("score: expected 0..3, got 7"), "{e}");
    let empty = set.head(0);
    let e = train_classifier(model(), &empty, None, &kd, &device, |_, _| {}).unwrap_err();
    assert!(matches!(e, TrainError::EmptyDataset { .. }), "{e}");
    // Bad settings.
    let zero = ScoringTrainConfig { batch_size: 0, ..kd.clone() };
    let e = train_classifier(model(), &set, None, &zero, &device, |_, _| {}).unwrap_err();
    assert!(matches!(e, TrainError::InvalidConfig { name: "batch_size", .. }), "{e}");
    assert!(ScoringClassifier::init(&tiny_config(512, 64), 1, &device).is_err());
}

#[test]
fn reading_checks_every_row() {
    let dir = std::env::temp_dir().join(format!("kd-scoring-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ok = write("ok.jsonl", "{\"question\": \"q\", \"answer\": \"a\", \"score\": 3}\n\n");
    assert_eq!(read_scored_jsonl(&ok, 4).unwrap()[0].score, 3);
    let e = read_scored_jsonl(&ok, 3).unwrap_err();
    assert!(matches!(e, TrainError::Data { line: 1, .. }) && e.to_string().contains("score 3"));
    let empty = write("empty.jsonl", "\n");
    assert!(matches!(read_scored_jsonl(&empty, 4).unwrap_err(), TrainError::EmptyDataset { .. }));
    let missing = write("missing.jsonl", "{\"question\": \"q\", \"score\": 1}\n");
    assert!(read_scored_jsonl(&missing, 4).unwrap_err().to_string().contains("answer"));
    let negative = write("neg.jsonl", "{\"question\": \"q\", \"answer\": \"a\", \"score\": -1}\n");
    assert!(matches!(read_scored_jsonl(&negative, 4).unwrap_err(), TrainError::Data { .. }));
    let broken = write("broken.jsonl", "{\"question\": \n");
    assert!(matches!(read_scored_jsonl(&broken, 4).unwrap_err(), TrainError::Data { .. }));
    assert!(matches!(read_scored_jsonl(&dir.join("none"), 4).unwrap_err(), TrainError::Io { .. }));
    assert!(read_scored_jsonl(&ok, 1).is_err());
    // Encoding: rows too long for the positions, scores outside the classes.
    let tok = tokenizer();
    let rows = read_scored_jsonl(&ok, 4).unwrap();
    assert!(ScoringSet::encode(&rows, &tok, 4, 2).unwrap_err().to_string().contains("length"));
    assert!(ScoringSet::encode(&rows, &tok, 3, 64).is_err());
    assert!(ScoringSet::encode(&[], &tok, 3, 64).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The shipped data: scores in 0..4, every row within the arithmetic models' 128 positions.
#[test]
fn shipped_scoring_data_fits_the_models() {
    let tok = tokenizer();
    for (file, n) in [("train.jsonl", 2400), ("eval.jsonl", 480)] {
        let rows = read_scored_jsonl(&assets().join("scoring").join(file), 4).unwrap();
        assert_eq!(rows.len(), n, "{file}");
        let set = ScoringSet::encode(&rows, &tok, 4, 128).unwrap();
        assert!(set.max_len() <= 128, "{file}: {}", set.max_len());
        assert!(set.ids.iter().all(|r| r[0] == 1), "{file}: every row starts with BOS");
    }
}

/// Public helpers given odd input return values, not panics.
#[test]
fn helpers_take_odd_input() {
    assert_eq!(
        kd_train::scoring::argmax_rows(&[vec![], vec![f32::NAN, 1.0], vec![2.0, 2.0]]),
        [0, 1, 0]
    );
    assert_eq!(quadratic_weighted_kappa(&[]), 0.0);
    assert_eq!(quadratic_weighted_kappa(&[vec![1], vec![0, 1]]), 1.0);
    assert_eq!(macro_f1(&[]), (0.0, vec![]));
}
