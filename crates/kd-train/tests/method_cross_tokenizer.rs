//! `cross_tokenizer` with the real GPT-2 and LLaMA-2 tokenizers (`../shared/data/`, beside the
//! repository; `KD_SHARED_DIR` overrides): the text alignment of hand-made strings against
//! hand-derived pairs, a tiny GPT-2-tokenizer teacher distilled into a tiny LLaMA-2-tokenizer
//! student whose loss decreases, an exact resume mid-run, and the errors for bad input.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kd_models::{CausalLm, Gpt2Config, LlamaConfig, ModelConfig, Tokenizer};
use kd_train::data::InstructionExample;
use kd_train::methods::cross_tokenizer::{
    CrossTokenizerConfig, ResponseTokens, TeacherDataset, TokenAlignment, align_responses,
    cross_tokenizer_data,
};
use kd_train::methods::kd::KdConfig;
use kd_train::params::param_values;
use kd_train::{MethodConfig, StepRecord, TrainConfig, TrainError, Trainer};

fn shared_data(name: &str) -> PathBuf {
    let root = match std::env::var_os("KD_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    let dir = root.join("data").join(name);
    assert!(dir.join("tokenizer.json").is_file(), "missing {} (set KD_SHARED_DIR)", dir.display());
    dir
}

fn gpt2() -> Tokenizer {
    Tokenizer::from_dir(shared_data("gpt2-tokenizer")).unwrap()
}

fn llama2() -> Tokenizer {
    Tokenizer::from_dir(shared_data("llama2-tokenizer")).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("kd-train-xtok-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// The pieces and start bytes of `text` (EOS last, at the text's length).
fn pieces(tok: &Tokenizer, text: &str) -> (Vec<String>, Vec<usize>) {
    let r = ResponseTokens::of(text, tok).unwrap();
    let names = r.ids.iter().map(|&id| tok.id_to_token(id).unwrap()).collect();
    (names, r.starts)
}

#[test]
fn text_alignment_of_gpt2_and_llama2_tokens() {
    let (g, l) = (gpt2(), llama2());
    let text = "6 - 4 = 2. The answer is 12.";
    // GPT-2: the space goes with the next word (`Ġ`); `12` is one token.
    let (gp, gs) = pieces(&g, text);
    let gpt2_pieces =
        ["6", "Ġ-", "Ġ4", "Ġ=", "Ġ2", ".", "ĠThe", "Ġanswer", "Ġis", "Ġ12", ".", "<|endoftext|>"];
    assert_eq!(gp, gpt2_pieces);
    assert_eq!(gs, [0, 1, 3, 5, 7, 9, 10, 14, 21, 24, 27, 28]);
    // LLaMA-2: a `▁` is prepended (no text: it starts at 0 like the `6` after it); digits are
    // single tokens, so ` 4` is `▁` + `4` and ` 12` is `▁` + `1` + `2`.
    let (lp, ls) = pieces(&l, text);
    let llama_pieces = [
        "▁",
        "6",
        "▁-",
        "▁",
        "4",
        "▁=",
        "▁",
        "2",
        ".",
        "▁The",
        "▁answer",
        "▁is",
        "▁",
        "1",
        "2",
        ".",
        "</s>",
    ];
    assert_eq!(lp, llama_pieces);
    assert_eq!(ls, [0, 0, 1, 3, 4, 5, 7, 8, 9, 10, 14, 21, 24, 25, 26, 27, 28]);
    // Common starts 0 1 3 5 7 9 10 14 21 24 27 and the EOS at 28; at byte 0 the first LLaMA
    // token (`▁`) is the one paired. Unpaired LLaMA tokens: `6` (second at 0), `4`, `2`, `1`, `2`
    // (inside GPT-2's `Ġ4`, `Ġ2`, `Ġ12`).
    let expected = [
        (0, 0),
        (2, 1),
        (3, 2),
        (5, 3),
        (6, 4),
        (8, 5),
        (9, 6),
        (10, 7),
        (11, 8),
        (12, 9),
        (15, 10),
        (16, 11),
    ];
    assert_eq!(align_responses(&ls, &gs, TokenAlignment::Text), expected);
    // The other way round: the same pairs, swapped.
    let swapped: Vec<_> = expected.iter().map(|&(a, b)| (b, a)).collect();
    assert_eq!(align_responses(&gs, &ls, TokenAlignment::Text), swapped);
    // The official code's pairing: the k-th token of each, up to the shorter (12) response.
    let by_position = align_responses(&ls, &gs, TokenAlignment::Position);
    assert_eq!(by_position, (0..12).map(|k| (k, k)).collect::<Vec<_>>());
}

#[test]
fn block_positions_of_the_pairs_predict_the_same_text() {
    let (l, g) = (llama2(), gpt2());
    let (s, t) =
        cross_tokenizer_data("rows", &examples(), &l, &g, SEQ, SEQ, TokenAlignment::Text).unwrap();
    assert_eq!(s.len(), 6);
    assert_eq!(t.len(), 6);
    for (i, ex) in examples().iter().enumerate() {
        let (sb, tb) = (&s.blocks[i], &t.blocks.blocks[i]);
        assert!(!t.pairs[i].is_empty());
        // The last prompt positions (the first counted labels).
        let first = |labels: &[i64]| labels.iter().position(|&x| x >= 0).unwrap();
        let (s0, t0) = (first(&sb.labels), first(&tb.labels));
        for &(sp, tp) in &t.pairs[i] {
            // The response read by both paired positions decodes to the same text.
            let s_text = l.decode(&sb.input_ids[s0 + 1..=sp], true).unwrap();
            let t_text = g.decode(&tb.input_ids[t0 + 1..=tp], true).unwrap();
            assert_eq!(s_text, t_text, "row {i}, pair ({sp}, {tp})");
            assert!(ex.response.starts_with(&t_text), "{t_text:?}");
            // Both positions predict a counted response token.
            assert!(sb.labels[sp] >= 0 && tb.labels[tp] >= 0);
        }
    }
}

/// Tiny instruction rows of the arithmetic task (template `plain`: question, newline).
fn examples() -> Vec<InstructionExample> {
    let rows = [
        ("Ben had 6 balls. He gave away 4. How many balls does Ben have now?", "6 - 4 = 2."),
        ("Mia had 3 cups. She got 5 more. How many cups does Mia have?", "3 + 5 = 8."),
        ("Sam had 9 hats. He lost 2. How many hats does Sam have now?", "9 - 2 = 7."),
        ("Ann had 4 pens. She found 4 more. How many pens does Ann have?", "4 + 4 = 8."),
        ("Tom had 7 cars. He sold 3. How many cars does Tom have now?", "7 - 3 = 4."),
        ("Liz had 2 keys. She made 6 more. How many keys does Liz have?", "2 + 6 = 8."),
    ];
    rows.iter()
        .map(|(q, a)| InstructionExample {
            prompt: format!("{q}\n"),
            response: format!(
                "{a} The answer is {}.",
                a.rsplit(' ').next().unwrap().trim_end_matches('.')
            ),
        })
        .collect()
}

const SEQ: usize = 48;

fn student_model(seed: u64, device: &Device) -> CausalLm {
    seeded(seed, device, || {
        ModelConfig::Llama(LlamaConfig {
            vocab_size: 32000,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 2,
            head_dim: 4,
            max_position_embeddings: SEQ,
            ..Default::default()
        })
    })
}

fn teacher_model(device: &Device) -> CausalLm {
    seeded(7, device, || {
        ModelConfig::Gpt2(Gpt2Config {
            vocab_size: 50257,
            n_positions: SEQ,
            n_embd: 8,
            n_layer: 1,
            n_head: 2,
            ..Default::default()
        })
    })
}

/// Seeding and initialisation under one lock (burn's device RNG is global; tests run in
/// parallel threads), parameters materialised before it is released.
fn seeded(seed: u64, device: &Device, config: impl Fn() -> ModelConfig) -> CausalLm {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    device.seed(seed);
    let model = CausalLm::init(&config(), device).unwrap();
    let _ = param_values(&model);
    model
}

fn data() -> (kd_train::data::TokenDataset, TeacherDataset) {
    let (l, g) = (llama2(), gpt2());
    cross_tokenizer_data("rows", &examples(), &l, &g, SEQ, SEQ, TokenAlignment::Text).unwrap()
}

fn config(steps: u64, out: Option<&Path>) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 3,
        lr: 1e-2,
        warmup_steps: 1,
        log_every: 0,
        eval_rouge_prompts: 0,
        checkpoint_every: 3,
        output_dir: out.map(Path::to_path_buf),
        seed: 3,
        method: MethodConfig::CrossTokenizer(CrossTokenizerConfig::default()),
        ..Default::default()
    }
}

fn trainer(config: TrainConfig, student: CausalLm, teacher: TeacherDataset) -> Trainer<CausalLm> {
    let device = Device::flex().autodiff();
    Trainer::new(config, student, &device)
        .unwrap()
        .with_teacher(teacher_model(&Device::flex()))
        .unwrap()
        .with_teacher_data(teacher)
}

fn det(r: &StepRecord) -> (u64, u64, u64, u64, Vec<(String, u64)>) {
    let extra = r
        .extra
        .iter()
        .filter(|(k, _)| !k.ends_with("per_s"))
        .map(|(k, v)| (k.clone(), v.to_bits()));
    (r.step, r.loss.to_bits(), r.grad_norm.to_bits(), r.tokens, extra.collect())
}

#[test]
fn gpt2_teacher_to_llama2_student_loss_decreases() {
    let device = Device::flex().autodiff();
    let (train, teacher) = data();
    // The whole set in every step: the same 6 rows each time.
    let ten = TrainConfig { batch_size: 6, lr: 2e-2, checkpoint_every: 0, ..config(10, None) };
    let mut t = trainer(ten, student_model(1, &device), teacher);
    let report = t.fit(&train, None).unwrap();
    let h = &report.history;
    for r in h {
        assert!(r.loss.is_finite() && r.tokens > 0);
        let (ce, uld, aligned) = (r.extra["ce"], r.extra["uld"], r.extra["aligned"]);
        assert!((r.loss - (ce + uld)).abs() < 1e-4, "loss = ce + uld: {r:?}");
        assert!(uld > 0.0 && aligned > 0.2 && aligned <= 1.0, "{r:?}");
    }
    let (first, last) = (h[0].loss, h[h.len() - 1].loss);
    assert!(last < 0.95 * first, "loss {first} -> {last}");
    // ULD alone (no cross-entropy): the loss is the ULD term and its gradient reaches the student.
    let (train, teacher) = data();
    let uld_only = CrossTokenizerConfig { crossentropy_weight: 0.0, ..Default::default() };
    let one = TrainConfig { method: MethodConfig::CrossTokenizer(uld_only), ..config(1, None) };
    let r = trainer(one, student_model(1, &device), teacher).fit(&train, None).unwrap();
    let r = &r.history[0];
    assert_eq!(r.loss.to_bits(), r.extra["uld"].to_bits(), "{r:?}");
    assert!(r.loss > 0.0 && r.grad_norm > 0.0 && r.grad_norm.is_finite(), "{r:?}");
}

#[test]
fn resume_mid_run_is_exact() {
    let device = Device::flex().autodiff();
    let (train, teacher) = data();
    let a_dir = tmp("a");
    let mut a = trainer(config(6, Some(&a_dir)), student_model(1, &device), teacher.clone());
    let ra = a.fit(&train, None).unwrap();
    let b_dir = tmp("b");
    let mut b = trainer(config(6, Some(&b_dir)), student_model(2, &device), teacher);
    b.resume_from(&a_dir.join("checkpoint-000003")).unwrap();
    let rb = b.fit(&train, None).unwrap();
    let da: Vec<_> = ra.history.iter().map(det).collect();
    let db: Vec<_> = rb.history.iter().map(det).collect();
    assert_eq!(da.len(), 6);
    assert_eq!(da, db, "step records differ after resume");
    assert_eq!(param_values(a.student()), param_values(b.student()), "weights differ");
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

#[test]
fn bad_input_is_an_error() {
    let device = Device::flex().autodiff();
    let (train, teacher) = data();
    // No teacher data.
    let mut t = Trainer::new(config(1, None), student_model(1, &device), &device)
        .unwrap()
        .with_teacher(teacher_model(&Device::flex()))
        .unwrap();
    let err = t.fit(&train, None).unwrap_err();
    assert!(matches!(err, TrainError::InvalidConfig { name: "teacher_data", .. }), "{err}");
    // Teacher data of another set (fewer blocks).
    let mut short = teacher.clone();
    short.blocks.blocks.truncate(2);
    short.pairs.truncate(2);
    let err = trainer(config(1, None), student_model(1, &device), short).fit(&train, None);
    assert!(matches!(err, Err(TrainError::InvalidConfig { name: "teacher_data", .. })), "{err:?}");
    // Teacher blocks longer than the teacher's positions.
    let (l, g) = (llama2(), gpt2());
    let (train64, long) =
        cross_tokenizer_data("rows", &examples(), &l, &g, SEQ, 64, TokenAlignment::Text).unwrap();
    let err = trainer(config(1, None), student_model(1, &device), long).fit(&train64, None);
    assert!(
        matches!(err, Err(TrainError::SequenceTooLong { model: "teacher", max: SEQ, .. })),
        "{err:?}"
    );
    // Teacher blocks too short for any response position: nothing to align.
    let err = cross_tokenizer_data("rows", &examples(), &l, &g, SEQ, 8, TokenAlignment::Text);
    assert!(matches!(err, Err(TrainError::EmptyDataset { .. })), "{err:?}");
    // Without cross_tokenizer a teacher of another vocabulary stays an error.
    let kd = TrainConfig { method: MethodConfig::Kd(KdConfig::default()), ..config(1, None) };
    let err = Trainer::new(kd, student_model(1, &device), &device)
        .unwrap()
        .with_teacher(teacher_model(&Device::flex()))
        .unwrap_err();
    assert!(matches!(err, TrainError::VocabMismatch { .. }), "{err}");
}
