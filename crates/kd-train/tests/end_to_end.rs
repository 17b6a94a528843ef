//! End to end on tiny models (seconds in debug): the loss falls, a resumed run reproduces the
//! uninterrupted one exactly, the exported student reloads, vocabulary mismatches are typed
//! errors, a user's own burn model trains through the trait, and evaluation on instruction data
//! reports ROUGE-L of greedy answers.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{Device, Int, Tensor};
use kd_models::{CausalLm, Gpt2Config, ModelConfig, Tokenizer};
use kd_train::MethodConfig;
use kd_train::data::{
    InstructionExample, TokenDataset, instruction_block, instruction_blocks, pack_tokens,
    prompt_ids,
};
use kd_train::methods::kd::KdConfig;
use kd_train::metrics::{MetricsLine, read_jsonl, rouge_l};
use kd_train::model::greedy_by_recompute;
use kd_train::params::param_values;
use kd_train::{
    Checkpoint, LanguageModel, RougeEval, StepRecord, TrainConfig, TrainError, Trainer,
    VocabAlignment,
};

const VOCAB: usize = 16;
const SEQ: usize = 8;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("kd-train-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn gpt2(n_layer: usize, n_embd: usize, vocab: usize, device: &Device) -> CausalLm {
    let config = ModelConfig::Gpt2(Gpt2Config {
        vocab_size: vocab,
        n_positions: SEQ,
        n_embd,
        n_layer,
        n_head: 2,
        ..Default::default()
    });
    CausalLm::init(&config, device).unwrap()
}

/// A learnable stream: a fixed random-looking cycle of period 11 over 16 tokens.
fn data() -> (TokenDataset, TokenDataset) {
    let cycle = [3u32, 7, 1, 12, 9, 4, 15, 0, 6, 10, 2];
    let tokens: Vec<u32> = (0..600).map(|i| cycle[i % cycle.len()]).collect();
    TokenDataset::new("train", pack_tokens(&tokens, SEQ)).unwrap().split_off_tail(0.1)
}

/// A record without the wall-clock field.
fn det(r: &StepRecord) -> (u64, u64, u64, u64, u64, Vec<(String, u64)>) {
    (
        r.step,
        r.loss.to_bits(),
        r.lr.to_bits(),
        r.grad_norm.to_bits(),
        r.tokens,
        r.extra.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect(),
    )
}

#[test]
fn loss_falls_without_and_with_a_teacher() {
    let device = Device::flex().autodiff();
    device.seed(0);
    let (train, eval) = data();
    // Teacher: trained alone with cross-entropy.
    let config = TrainConfig {
        steps: 30,
        batch_size: 8,
        lr: 1e-2,
        warmup_steps: 2,
        log_every: 0,
        ..Default::default()
    };
    let mut t =
        Trainer::<CausalLm>::new(config.clone(), gpt2(2, 16, VOCAB, &device), &device).unwrap();
    let before = t.evaluate(&eval).unwrap();
    let report = t.fit(&train, Some(&eval)).unwrap();
    let after = report.evals.last().unwrap();
    assert!(
        after.loss < 0.5 * before.loss,
        "teacher held-out loss {} -> {}",
        before.loss,
        after.loss
    );
    let teacher = t.into_student().valid();

    // Student: distilled with reverse KL; the distillation loss and held-out CE both fall.
    let config = TrainConfig {
        steps: 20,
        method: MethodConfig::Kd(KdConfig::with_loss("reverse_kl").unwrap()),
        ..config
    };
    let mut s = Trainer::new(config, gpt2(1, 8, VOCAB, &device), &device)
        .unwrap()
        .with_teacher(teacher)
        .unwrap();
    let before = s.evaluate(&eval).unwrap();
    let report = s.fit(&train, Some(&eval)).unwrap();
    let first = report.history.first().unwrap().loss;
    let last = report.history.last().unwrap().loss;
    assert!(last < 0.8 * first, "KD loss {first} -> {last}");
    assert!(report.evals.last().unwrap().loss < before.loss);
}

fn resume_config(out: &Path) -> TrainConfig {
    TrainConfig {
        steps: 6,
        batch_size: 3,
        grad_accum: 2,
        lr: 5e-3,
        warmup_steps: 2,
        max_grad_norm: Some(0.5),
        eval_every: 2,
        log_every: 0,
        checkpoint_every: 3,
        keep_checkpoints: 5,
        output_dir: Some(out.to_path_buf()),
        method: MethodConfig::Kd(KdConfig {
            hard_label_weight: 0.25,
            ..KdConfig::with_loss("taid").unwrap()
        }),
        seed: 11,
        ..Default::default()
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run_exactly_and_export_reloads() {
    let device = Device::flex().autodiff();
    let plain = Device::flex();
    device.seed(3);
    let (train, eval) = data();
    let teacher = gpt2(1, 16, VOCAB, &plain);
    let student = gpt2(1, 8, VOCAB, &device);

    // Uninterrupted run: 6 steps, checkpoints after 3 and 6.
    let a_dir = tmp("resume-a");
    let mut a = Trainer::new(resume_config(&a_dir), student.clone(), &device)
        .unwrap()
        .with_teacher(teacher.clone())
        .unwrap();
    let ra = a.fit(&train, Some(&eval)).unwrap();
    assert_eq!(ra.history.len(), 6);
    let mid = a_dir.join("checkpoint-000003");
    assert!(mid.join("state.json").is_file() && a_dir.join("checkpoint-000006").is_dir());
    // TAID's t moved and is in the checkpoint.
    let ck = Checkpoint::load(&mid).unwrap();
    assert!(ck.state.method.get("taid").is_some());
    assert!(ra.history.iter().all(|r| r.extra.contains_key("taid_t")));
    assert_eq!(ck.state.step, 3);

    // A resume under another schedule (more steps: a later cosine horizon) is refused unless
    // the change is allowed.
    let longer = TrainConfig { steps: 9, ..resume_config(&tmp("resume-longer")) };
    let mut c: Trainer<CausalLm> = Trainer::new(longer.clone(), student.clone(), &device).unwrap();
    let err = c.resume_from(&mid).unwrap_err();
    assert!(matches!(err, TrainError::ScheduleMismatch { .. }), "{err}");
    assert!(err.to_string().contains("6 steps") && err.to_string().contains("9 steps"), "{err}");
    let allowed = TrainConfig { allow_schedule_change: true, ..longer };
    let mut c: Trainer<CausalLm> = Trainer::new(allowed, student.clone(), &device).unwrap();
    c.resume_from(&mid).unwrap();
    assert_eq!(c.checkpoint().state.schedule.unwrap().total_steps, 9);
    std::fs::remove_dir_all(tmp("resume-longer")).ok();

    // Interrupted run: a differently initialised student, resumed from step 3.
    let b_dir = tmp("resume-b");
    let mut b = Trainer::new(resume_config(&b_dir), gpt2(1, 8, VOCAB, &device), &device)
        .unwrap()
        .with_teacher(teacher)
        .unwrap();
    b.resume_from(&mid).unwrap();
    let rb = b.fit(&train, Some(&eval)).unwrap();
    let da: Vec<_> = ra.history.iter().map(det).collect();
    let db: Vec<_> = rb.history.iter().map(det).collect();
    assert_eq!(da, db, "step records differ after resume");
    assert_eq!(ra.evals, rb.evals);
    assert_eq!(param_values(a.student()), param_values(b.student()));
    let lines = kd_train::metrics::read_jsonl(&b_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 6 + 4, "6 steps and 4 evaluations (0, 2, 4, 6) in the metrics");

    // Export as a Hugging Face directory and reload: same logits.
    let export = a_dir.join("export");
    let trained = a.into_student();
    trained.save_pretrained(&export).unwrap();
    let reloaded = CausalLm::from_pretrained(&export, &plain).unwrap();
    let ids = Tensor::<2, Int>::from_ints([[3, 7, 1, 12]], &plain);
    let x = trained.valid().logits(ids.clone()).into_data();
    let y = reloaded.logits(ids).into_data();
    x.assert_eq(&y, true);

    std::fs::remove_dir_all(&a_dir).unwrap();
    std::fs::remove_dir_all(&b_dir).unwrap();
}

#[test]
fn padded_vocabularies_need_an_explicit_alignment() {
    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let (train, _) = data();
    let config = TrainConfig {
        steps: 1,
        batch_size: 2,
        log_every: 0,
        method: MethodConfig::Kd(KdConfig::with_loss("forward_kl").unwrap()),
        ..Default::default()
    };
    let err = Trainer::new(config.clone(), gpt2(1, 8, VOCAB, &device), &device)
        .unwrap()
        .with_teacher(gpt2(1, 8, VOCAB + 4, &plain))
        .unwrap_err();
    assert!(matches!(err, TrainError::VocabMismatch { student: 16, teacher: 20 }));
    let config = TrainConfig { vocab_alignment: VocabAlignment::SliceToShared, ..config };
    let mut t = Trainer::new(config, gpt2(1, 8, VOCAB, &device), &device)
        .unwrap()
        .with_teacher(gpt2(1, 8, VOCAB + 4, &plain))
        .unwrap();
    let r = t.fit(&train, None).unwrap();
    assert!(r.history[0].loss.is_finite());

    // A teacher for a method that uses none is a config error.
    let no_loss = TrainConfig { steps: 1, ..Default::default() };
    assert!(matches!(
        Trainer::new(no_loss, gpt2(1, 8, VOCAB, &device), &device)
            .unwrap()
            .with_teacher(gpt2(1, 8, VOCAB, &plain)),
        Err(TrainError::InvalidConfig { name: "method", .. })
    ));
}

/// A user's own model: a bigram table.
#[derive(Module, Debug)]
struct Bigram {
    table: Embedding,
}

impl LanguageModel for Bigram {
    fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.table.forward(input_ids)
    }
    fn vocab_size(&self) -> usize {
        self.table.weight.dims()[0]
    }
}

#[test]
fn a_custom_model_trains_on_response_tokens_only() {
    let device = Device::flex().autodiff();
    device.seed(5);
    // Instruction data: prompt [1, 2], response [5, 6, 7]; only the response is learned.
    let blocks = (0..8).map(|_| instruction_block(&[1, 2], &[5, 6, 7], 6, 0)).collect();
    let data = TokenDataset::new("sft", blocks).unwrap();
    let model = Bigram { table: EmbeddingConfig::new(VOCAB, VOCAB).init(&device) };
    let config = TrainConfig {
        steps: 40,
        batch_size: 4,
        lr: 0.1,
        warmup_steps: 0,
        log_every: 0,
        ..Default::default()
    };
    let mut t = Trainer::<Bigram>::new(config, model, &device).unwrap();
    let before = t.evaluate(&data).unwrap().loss;
    let r = t.fit(&data, Some(&data)).unwrap();
    let after = r.evals.last().unwrap().loss;
    assert!(after < 0.3 * before, "{before} -> {after}");
    // Counted tokens per step: 4 blocks × 3 response targets.
    assert_eq!(r.history[0].tokens, 12);
}

#[test]
fn weight_decay_groups_on_a_real_model() {
    let infos = kd_train::params::param_infos(&gpt2(1, 8, VOCAB, &Device::flex()));
    let decayed: Vec<&str> =
        infos.iter().filter(|i| i.decays(false)).map(|i| i.path.as_str()).collect();
    // Only the block matrices decay: no embeddings (wte, wpe), biases or layer-norm gains.
    assert_eq!(
        decayed,
        [
            "Gpt2.h.0.attn.c_attn.weight",
            "Gpt2.h.0.attn.c_proj.weight",
            "Gpt2.h.0.mlp.c_fc.weight",
            "Gpt2.h.0.mlp.c_proj.weight",
        ]
    );
    assert!(infos.iter().any(|i| i.path == "Gpt2.wte.weight" && i.in_embedding));
}

/// The tiny GPT-2 checkpoint and tokenizer of kd-models' tests (vocabulary 512, 128 positions).
fn tiny_gpt2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kd-models/tests/fixtures/hf-tiny-gpt2")
}

/// Dolly-style prompt/response pairs.
fn arithmetic(n: usize) -> Vec<InstructionExample> {
    (0..n)
        .map(|i| {
            let (a, b) = (i % 5, i / 5 + 1);
            InstructionExample {
                prompt: format!("### Instruction:\nWhat is {a} plus {b}?\n\n### Response:\n"),
                response: format!("{a} plus {b} is {}.", a + b),
            }
        })
        .collect()
}

#[test]
fn instruction_evaluation_reports_rouge_l_of_greedy_answers() {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    device.seed(7);
    let dir = tiny_gpt2_dir();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let teacher = CausalLm::from_pretrained(&dir, &plain).unwrap();
    let student = CausalLm::init(
        &ModelConfig::Gpt2(Gpt2Config {
            vocab_size: 512,
            n_positions: 128,
            n_embd: 16,
            n_layer: 1,
            n_head: 2,
            ..Default::default()
        }),
        &device,
    )
    .unwrap();
    let examples = arithmetic(12);
    let (seq_len, split) = (40, 9);
    let blocks = instruction_blocks(&examples, &tok, seq_len).unwrap();
    let train = TokenDataset::new("train", blocks[..split].to_vec()).unwrap();
    let eval = TokenDataset::new("eval", blocks[split..].to_vec()).unwrap();
    let held_out = &examples[split..];

    let out = tmp("rouge");
    let config = TrainConfig {
        steps: 4,
        batch_size: 3,
        lr: 1e-2,
        warmup_steps: 1,
        eval_every: 2,
        eval_rouge_prompts: 2,
        eval_max_new_tokens: 6,
        log_every: 0,
        output_dir: Some(out.clone()),
        method: MethodConfig::Kd(KdConfig::with_loss("forward_kl").unwrap()),
        ..Default::default()
    };
    let mut trainer = Trainer::new(config, student, &device)
        .unwrap()
        .with_teacher(teacher)
        .unwrap()
        .with_rouge_eval(RougeEval::new(held_out, tok.clone()).unwrap());
    let report = trainer.fit(&train, Some(&eval)).unwrap();

    // Evaluations at steps 0, 2 and 4, each with a ROUGE-L in [0, 1], in the report and the log.
    let logged: Vec<_> = read_jsonl(&out.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            MetricsLine::Eval(e) => Some(e),
            MetricsLine::Train(_) => None,
        })
        .collect();
    assert_eq!(logged, report.evals);
    assert_eq!(logged.iter().map(|e| e.step).collect::<Vec<_>>(), [0, 2, 4]);
    for e in &logged {
        let r = e.rouge_l.unwrap_or_else(|| panic!("no rouge_l at step {}", e.step));
        assert!((0.0..=1.0).contains(&r), "rouge_l {r} at step {}", e.step);
    }
    let raw = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(raw.matches("\"rouge_l\":").count(), 3);

    // The last score is the mean ROUGE-L of the final student's greedy answers to the first two
    // held-out prompts, recomputed here from kd-models' generate.
    let student = trainer.into_student().valid();
    // RougeEval keeps prompt + answer within `seq_len`: a prompt keeps its last
    // `seq_len − max_new_tokens` tokens (without that, a prompt longer than 34 tokens gives
    // another answer, and the comparison below depends on how the student was initialised).
    let keep = seq_len - 6;
    let prompts: Vec<Vec<u32>> = held_out[..2]
        .iter()
        .map(|ex| {
            let p = prompt_ids(&ex.prompt, &tok).unwrap();
            p[p.len().saturating_sub(keep)..].to_vec()
        })
        .collect();
    let settings = kd_models::GenerationConfig {
        max_new_tokens: 6,
        eos_token_ids: tok.eos_token_id().into_iter().collect(),
        ..Default::default()
    };
    let generated = kd_models::generate(&student, &prompts, &settings, &plain, |_, _| {}).unwrap();
    let answers: Vec<String> =
        generated.new_tokens.iter().map(|ids| tok.decode(ids, true).unwrap()).collect();
    let expected = (rouge_l(&answers[0], &held_out[0].response)
        + rouge_l(&answers[1], &held_out[1].response))
        / 2.0;
    let last = logged.last().unwrap().rouge_l.unwrap();
    assert!((last - expected).abs() < 1e-12, "logged {last}, recomputed {expected}");
    // Against its own answers as references the student scores 1 (0 for an empty answer).
    let own: Vec<InstructionExample> = held_out[..2]
        .iter()
        .zip(&answers)
        .map(|(ex, a)| InstructionExample { prompt: ex.prompt.clone(), response: a.clone() })
        .collect();
    let own_score = RougeEval::new(&own, tok.clone())
        .unwrap()
        .score(&student, 2, 6, seq_len, 3, &plain)
        .unwrap()
        .unwrap();
    let nonempty = answers.iter().filter(|a| !a.trim().is_empty()).count() as f64;
    assert!((own_score - nonempty / 2.0).abs() < 1e-12, "{own_score} for {answers:?}");

    // Without prompts no ROUGE-L is measured.
    let plain_eval = Trainer::<CausalLm>::new(TrainConfig::default(), student.clone(), &device)
        .unwrap()
        .evaluate(&eval)
        .unwrap();
    assert_eq!(plain_eval.rouge_l, None);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn greedy_by_recompute_matches_the_kv_cache_decoder() {
    let plain = Device::flex();
    let dir = tiny_gpt2_dir();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let model = CausalLm::from_pretrained(&dir, &plain).unwrap();
    let prompts: Vec<Vec<u32>> = ["Once upon a time", "The cat", "A"]
        .iter()
        .map(|p| tok.encode(p, false).unwrap())
        .collect();
    // Batched and left-padded with a KV cache vs one by one, recomputed: the same tokens.
    let cached = model.generate_greedy(&prompts, 5, &[], &plain).unwrap();
    let recomputed = greedy_by_recompute(&model, &prompts, 5, &[], &plain).unwrap();
    assert_eq!(cached, recomputed);
    assert!(cached.iter().all(|row| row.len() == 5));
    // Stopping at an EOS id keeps it and ends the row.
    let stop = cached[0][2];
    let stopped = greedy_by_recompute(&model, &prompts[..1], 5, &[stop], &plain).unwrap();
    let first = cached[0].iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped[0], cached[0][..=first]);
    assert_eq!(model.generate_greedy(&prompts[..1], 5, &[stop], &plain).unwrap(), stopped);
}
