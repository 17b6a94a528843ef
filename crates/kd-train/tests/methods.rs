//! Every method end to end on tiny models: a few steps, an exact resume mid-run, and the checks
//! that tie each method to an independent reference (the `kd` path, the rollout's own
//! log-probabilities, a teacher equal to the student).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};
use kd_models::CausalLm;
use kd_models::sampling::Rng;
use kd_train::data::{TokenDataset, instruction_block, pack_tokens};
use kd_train::methods::cross_tokenizer::TeacherDataset;
use kd_train::methods::gkd::GkdConfig;
use kd_train::methods::kd::KdConfig;
use kd_train::methods::minillm::MiniLlmMethodConfig;
use kd_train::methods::seqkd::SeqKdConfig;
use kd_train::params::param_values;
use kd_train::rollout::{SamplingConfig, SequenceBatch, SpecialTokens, sample, score};
use kd_train::text_views::NameTokens;
use kd_train::{LanguageModel, MethodConfig, StepRecord, TrainConfig, TrainError, Trainer};

use common::{SEQ, config, det, seeded};

mod common;

fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("methods-{name}"))
}

const EOS: u32 = 2;

/// "Add" prompts `[1, a, b, 3]` with responses `[a + b (mod 20) + 4, EOS]`: a tiny instruction
/// set with prompts of one length and short responses.
fn instruction_data() -> TokenDataset {
    let blocks = (0..40)
        .map(|i| {
            let (a, b) = (4 + i % 7, 4 + (i * 3) % 9);
            let prompt = [1, a as u32, b as u32, 3];
            let response = [((a + b) % 20 + 4) as u32, EOS];
            instruction_block(&prompt, &response, SEQ, 0)
        })
        .collect();
    TokenDataset::new("add", blocks).unwrap()
}

fn pt_data() -> TokenDataset {
    let tokens: Vec<u32> = (0..400).map(|i| (4 + (i * 5) % 19) as u32).collect();
    TokenDataset::new("pt", pack_tokens(&tokens, SEQ)).unwrap()
}

fn trainer(method: MethodConfig, out: Option<&Path>, student: CausalLm) -> Trainer<CausalLm> {
    let device = Device::flex().autodiff();
    let teacher = seeded(99, 16, 2, &Device::flex());
    let t = Trainer::new(config(method, out), student, &device)
        .unwrap()
        .with_special_tokens(vec![EOS], 0)
        .with_pt_data(pt_data());
    let t = if t.uses_teacher() { t.with_teacher(teacher).unwrap() } else { t };
    if matches!(&t.config().method, MethodConfig::Kd(k) if k.is_delta_kd())
        || matches!(&t.config().method, MethodConfig::Whp(_))
    {
        let plain = Device::flex();
        t.with_base_models(seeded(77, 16, 2, &plain), seeded(55, 8, 1, &plain)).unwrap()
    } else {
        t
    }
}

/// Runs 6 steps straight, then 3 + resume + 3 from a different initialisation: same records,
/// same weights.
fn resume_is_exact(name: &str, method: MethodConfig) -> Vec<StepRecord> {
    let device = Device::flex().autodiff();
    let student = seeded(1, 8, 1, &device);
    let data = instruction_data();
    let a_dir = tmp(&format!("{name}-a"));
    let mut a = trainer(method.clone(), Some(&a_dir), student);
    let ra = a.fit(&data, None).unwrap();
    assert_eq!(ra.history.len(), 6);
    assert!(ra.history.iter().all(|r| r.loss.is_finite() && r.tokens > 0), "{name}");

    let b_dir = tmp(&format!("{name}-b"));
    let mut b = trainer(method, Some(&b_dir), seeded(2, 8, 1, &device));
    b.resume_from(&a_dir.join("checkpoint-000003")).unwrap();
    let rb = b.fit(&data, None).unwrap();
    let da: Vec<_> = ra.history.iter().map(det).collect();
    let db: Vec<_> = rb.history.iter().map(det).collect();
    assert_eq!(da, db, "{name}: step records differ after resume");
    assert_eq!(param_values(a.student()), param_values(b.student()), "{name}: weights differ");
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
    ra.history
}

#[test]
fn sft_and_kd_resume_exactly() {
    resume_is_exact("sft", MethodConfig::by_name("sft").unwrap());
    let kd = KdConfig { hard_label_weight: 0.3, ..KdConfig::with_loss("taid").unwrap() };
    let h = resume_is_exact("kd", MethodConfig::Kd(kd));
    assert!(h.iter().all(|r| r.extra.contains_key("taid_t")));
}

#[test]
fn kd_with_a_top_k_teacher_resumes_exactly() {
    let kd = KdConfig {
        teacher_top_k: Some(kd_train::methods::kd::TopKTeacher { k: 5, loss: Default::default() }),
        ..KdConfig::default()
    };
    resume_is_exact("kd-topk", MethodConfig::Kd(kd));
}

#[test]
fn gkd_resumes_exactly_and_samples_on_policy() {
    let gkd = GkdConfig {
        sampling: SamplingConfig { max_new_tokens: 6, ..GkdConfig::default().sampling },
        ..GkdConfig::default()
    };
    let h = resume_is_exact("gkd", MethodConfig::Gkd(gkd));
    let on: f64 = h.iter().map(|r| r.extra["on_policy"]).sum();
    assert!(on > 0.0 && on < 6.0, "λ = 0.5 mixes both kinds of batches: {on}");
}

#[test]
fn seqkd_and_gkd_seq_kd_resume_exactly() {
    let seqkd = SeqKdConfig {
        sampling: SamplingConfig { max_new_tokens: 6, ..SeqKdConfig::default().sampling },
        original_fraction: 0.25,
        ..SeqKdConfig::default()
    };
    resume_is_exact("seqkd", MethodConfig::SeqKd(seqkd));
    let gkd = GkdConfig {
        lmbda: 0.0,
        seq_kd: true,
        sampling: SamplingConfig { max_new_tokens: 6, ..GkdConfig::default().sampling },
        ..GkdConfig::default()
    };
    resume_is_exact("gkd-seqkd", MethodConfig::Gkd(gkd));
}

#[test]
fn minillm_resumes_exactly_inside_a_rollout_phase() {
    let m = MiniLlmMethodConfig {
        rollout_batches: 2,
        ppo_epochs: 2,
        sampling: SamplingConfig { max_new_tokens: 6, ..SamplingConfig::default() },
        ..MiniLlmMethodConfig::default()
    };
    // Phases start at micro-batches 1 and 5: the resume at step 3 lands inside the first.
    let h = resume_is_exact("minillm", MethodConfig::MiniLlm(m));
    let phases: Vec<u64> =
        h.iter().filter(|r| r.extra.contains_key("rollout_tokens_per_s")).map(|r| r.step).collect();
    assert_eq!(phases, [1, 5]);
    assert!(h.iter().all(|r| r.extra.contains_key("pg_loss") && r.extra.contains_key("pt_loss")));
}

/// Off-policy GKD (λ = 0) on the data's responses is the `kd` method with the generalized JSD.
#[test]
fn gkd_without_sampling_equals_kd_with_the_generalized_jsd() {
    let device = Device::flex().autodiff();
    let student = seeded(4, 8, 1, &device);
    let data = instruction_data();
    let gkd = GkdConfig { lmbda: 0.0, beta: 0.3, ..GkdConfig::default() };
    let kd = KdConfig {
        divergence: serde_json::from_str(r#"{"loss": "gkd_jsd", "beta": 0.3}"#).unwrap(),
        ..KdConfig::default()
    };
    let a = trainer(MethodConfig::Gkd(gkd), None, student.clone()).fit(&data, None).unwrap();
    let b = trainer(MethodConfig::Kd(kd), None, student).fit(&data, None).unwrap();
    for (x, y) in a.history.iter().zip(&b.history) {
        assert!((x.loss - y.loss).abs() < 1e-5 * y.loss.abs().max(1.0), "{} vs {}", x.loss, y.loss);
        assert_eq!(x.tokens, y.tokens);
    }
}

/// A teacher identical to the student gives MiniLLM zero rewards and a zero single-step term.
#[test]
fn minillm_with_the_student_as_teacher_has_nothing_to_learn() {
    let device = Device::flex().autodiff();
    let student = seeded(6, 8, 1, &device);
    let m = MiniLlmMethodConfig {
        rollout_batches: 1,
        ppo_epochs: 1,
        pt_weight: 0.0,
        sampling: SamplingConfig { max_new_tokens: 6, ..SamplingConfig::default() },
        ..MiniLlmMethodConfig::default()
    };
    let config = TrainConfig { steps: 1, ..config(MethodConfig::MiniLlm(m), None) };
    let mut t = Trainer::new(config, student.clone(), &device)
        .unwrap()
        .with_special_tokens(vec![EOS], 0)
        .with_teacher(student.valid())
        .unwrap();
    let r = t.fit(&instruction_data(), None).unwrap();
    let e = &r.history[0].extra;
    assert!(e["reward"].abs() < 1e-5, "{e:?}");
    assert!(e["reg_loss"].abs() < 1e-5, "{e:?}");
    assert!(e["pg_loss"].abs() < 1e-5, "{e:?}");
}

#[test]
fn methods_that_need_a_teacher_say_so() {
    let device = Device::flex().autodiff();
    let t = Trainer::<CausalLm>::new(
        config(MethodConfig::by_name("gkd").unwrap(), None),
        seeded(3, 8, 1, &device),
        &device,
    )
    .unwrap();
    let mut t = t;
    assert!(matches!(
        t.fit(&instruction_data(), None),
        Err(TrainError::InvalidConfig { name: "teacher", .. })
    ));
}

/// A model that only provides logits: rollouts go through the recompute decoder.
#[derive(Module, Debug)]
struct NoCache {
    inner: CausalLm,
}

impl LanguageModel for NoCache {
    fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.inner.logits(input_ids)
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}

#[test]
fn rollouts_are_seeded_and_their_logprobs_are_the_policys() {
    let d = Device::flex();
    let student = seeded(8, 8, 1, &d);
    let teacher = seeded(9, 16, 1, &d);
    let prompts = vec![vec![1, 5, 6, 3], vec![1, 9], vec![1, 4, 4, 4, 4, 3]];
    let caps = [6, 8, 3];
    let cfg = SamplingConfig { temperature: 0.8, max_new_tokens: 7, ..Default::default() };
    let eos = SpecialTokens { eos_ids: vec![EOS], pad_id: 0 };
    let no_eos = SpecialTokens::default();
    let none: Option<(&CausalLm, f64)> = None;
    let run = |seed| {
        sample(&student, none, &prompts, &caps, &cfg, &eos, &mut Rng::new(seed), &d).unwrap()
    };
    let a = run(3);
    assert_eq!(a, run(3));
    assert_ne!(a.responses, run(4).responses);
    for (r, cap) in a.responses.iter().zip([6, 7, 3]) {
        assert!(!r.is_empty() && r.len() <= cap);
        assert!(r[..r.len() - 1].iter().all(|&t| t != EOS), "stops at the first EOS");
    }
    // The recompute decoder draws the same tokens as the KV cache.
    let plain = NoCache { inner: student.clone() };
    let b = sample(&plain, none, &prompts, &caps, &cfg, &eos, &mut Rng::new(3), &d).unwrap();
    assert_eq!(a.responses, b.responses);

    // Log-probs: the student's log softmax(s/T) at the drawn tokens, as one scoring forward sees.
    let seqs = SequenceBatch::new(&a.prompts, &a.responses, 0, &d);
    let lp: Vec<f32> = score(&student, &seqs, 0.8).into_data().try_to_vec().unwrap();
    for (r, l) in a.logprobs.iter().enumerate() {
        for (j, x) in l.iter().enumerate() {
            let y = f64::from(lp[r * seqs.width + j]);
            assert!((x - y).abs() < 1e-4, "row {r} token {j}: {x} vs {y}");
        }
    }

    // Teacher-mixed sampling: log((1 − α) q + α p) at the drawn tokens.
    let alpha = 0.3;
    let m = sample(
        &student,
        Some((&teacher, alpha)),
        &prompts,
        &caps,
        &cfg,
        &eos,
        &mut Rng::new(5),
        &d,
    )
    .unwrap();
    let seqs = SequenceBatch::new(&m.prompts, &m.responses, 0, &d);
    let q: Vec<f32> = score(&student, &seqs, 0.8).into_data().try_to_vec().unwrap();
    let p: Vec<f32> = score(&teacher, &seqs, 0.8).into_data().try_to_vec().unwrap();
    for (r, l) in m.logprobs.iter().enumerate() {
        for (j, x) in l.iter().enumerate() {
            let k = r * seqs.width + j;
            let want = ((1.0 - alpha) * f64::from(q[k]).exp() + alpha * f64::from(p[k]).exp()).ln();
            assert!((x - want).abs() < 1e-4, "row {r} token {j}: {x} vs {want}");
        }
    }

    // Greedy: the KV-cache greedy decoder's tokens, log-prob 0.
    let greedy = SamplingConfig { temperature: 0.0, max_new_tokens: 5, ..Default::default() };
    let g = sample(&student, none, &prompts, &[5, 5, 5], &greedy, &no_eos, &mut Rng::new(0), &d)
        .unwrap();
    let want = student.generate_greedy(&prompts, 5, &[], &d).unwrap();
    assert_eq!(g.responses, want);
    assert!(g.logprobs.iter().flatten().all(|&x| x == 0.0));
}

/// `kd` through the chunked head gives the dense path's losses (no `[tokens, vocab]` logits).
#[test]
fn kd_through_the_chunked_head_matches_the_dense_path() {
    let device = Device::flex().autodiff();
    let student = seeded(7, 8, 1, &device);
    let data = instruction_data();
    let dense = KdConfig { hard_label_weight: 0.2, ..KdConfig::with_loss("reverse_kl").unwrap() };
    let chunked = KdConfig { chunk_rows: Some(5), ..dense.clone() };
    let a = trainer(MethodConfig::Kd(dense), None, student.clone()).fit(&data, None).unwrap();
    let b = trainer(MethodConfig::Kd(chunked.clone()), None, student).fit(&data, None).unwrap();
    for (x, y) in a.history.iter().zip(&b.history) {
        assert!((x.loss - y.loss).abs() < 1e-5 * y.loss.abs().max(1.0), "{} vs {}", x.loss, y.loss);
        assert!((x.grad_norm - y.grad_norm).abs() < 1e-4 * y.grad_norm.max(1.0));
    }
    let taid = KdConfig { chunk_rows: Some(7), ..KdConfig::with_loss("taid").unwrap() };
    resume_is_exact("kd-chunked", MethodConfig::Kd(taid));
}

/// The first step's loss of `method` (before any update: the initial student's loss on the
/// first batch of the data order, which every run of one seed shares).
fn first_loss(method: MethodConfig, teacher: CausalLm, base: Option<(CausalLm, CausalLm)>) -> f64 {
    let device = Device::flex().autodiff();
    let mut c = config(method, None);
    c.steps = 1;
    let t = Trainer::new(c, seeded(1, 8, 1, &device), &device).unwrap();
    let t = if t.uses_teacher() { t.with_teacher(teacher).unwrap() } else { t };
    let mut t = match base {
        Some((bt, bs)) => t.with_base_models(bt, bs).unwrap(),
        None => t,
    };
    t.fit(&instruction_data(), None).unwrap().history[0].loss
}

#[test]
fn kd_warmup_ramps_the_kd_term_and_resumes_exactly() {
    let w = 0.4;
    let warm = |steps| {
        MethodConfig::Kd(KdConfig {
            hard_label_weight: w,
            kd_warmup_steps: steps,
            ..KdConfig::with_loss("dkd").unwrap()
        })
    };
    // The factor ramps 1/4, 2/4, 3/4, 1, then stays at 1, also across the resume at step 3.
    let h = resume_is_exact("kd-warmup", warm(4));
    let factors: Vec<f64> = h.iter().map(|r| r.extra["kd_factor"]).collect();
    assert_eq!(factors, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    // Step 1 = (1/4)·(1 − w)·KD + w·CE, from a pure-KD run and an SFT run on the same batch.
    let plain = Device::flex();
    let teacher = || seeded(99, 16, 2, &plain);
    let kd_only =
        first_loss(MethodConfig::Kd(KdConfig::with_loss("dkd").unwrap()), teacher(), None);
    let ce = first_loss(MethodConfig::by_name("sft").unwrap(), teacher(), None);
    let got = first_loss(warm(4), teacher(), None);
    let want = 0.25 * (1.0 - w) * kd_only + w * ce;
    assert!((got - want).abs() < 1e-5 * want.abs().max(1.0), "{got} vs {want}");
    // Without warm-up the run is the plain mix.
    let plain_mix = first_loss(warm(0), teacher(), None);
    let want = (1.0 - w) * kd_only + w * ce;
    assert!((plain_mix - want).abs() < 1e-5 * want.abs().max(1.0), "{plain_mix} vs {want}");
}

#[test]
fn delta_kd_resumes_exactly_with_and_without_its_cache() {
    let delta = |cache_mb| {
        MethodConfig::Kd(KdConfig {
            base_logits_cache_mb: cache_mb,
            ..KdConfig::with_loss("delta_kd").unwrap()
        })
    };
    let a = resume_is_exact("delta", delta(0));
    let b = resume_is_exact("delta-cached", delta(64));
    // The cache holds z_sb − α·z_tb; the uncached target rounds z_sb + α·(z_t − z_tb).
    for (x, y) in a.iter().zip(&b) {
        assert!((x.loss - y.loss).abs() < 1e-5 * x.loss.max(1.0), "{} vs {}", x.loss, y.loss);
    }
}

#[test]
fn delta_kd_with_an_unchanged_teacher_distils_the_base_student() {
    // z_t = z_tb: the target z_sb + α·(z_t − z_tb) is the base student's own distribution, so
    // Delta-KD is forward KL with the base student as the teacher.
    let plain = Device::flex();
    let teacher = || seeded(99, 16, 2, &plain);
    let base_student = || seeded(55, 16, 2, &plain);
    for cache_mb in [0, 64] {
        let delta =
            KdConfig { base_logits_cache_mb: cache_mb, ..KdConfig::with_loss("delta_kd").unwrap() };
        let got = first_loss(MethodConfig::Kd(delta), teacher(), Some((teacher(), base_student())));
        let want = first_loss(MethodConfig::Kd(KdConfig::default()), base_student(), None);
        assert!((got - want).abs() < 1e-5 * want.max(1.0), "cache {cache_mb}: {got} vs {want}");
    }
}

#[test]
fn delta_kd_settings_and_base_models_are_checked() {
    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let delta = MethodConfig::Kd(KdConfig::with_loss("delta_kd").unwrap());
    // delta_kd without base models: an error naming them before any step.
    let mut t =
        Trainer::<CausalLm>::new(config(delta.clone(), None), seeded(3, 8, 1, &device), &device)
            .unwrap()
            .with_teacher(seeded(99, 16, 2, &plain))
            .unwrap();
    assert!(matches!(
        t.fit(&instruction_data(), None),
        Err(TrainError::InvalidConfig { name: "base models", .. })
    ));
    // Base models for a loss that does not use them.
    let t = Trainer::<CausalLm>::new(
        config(MethodConfig::Kd(KdConfig::default()), None),
        seeded(3, 8, 1, &device),
        &device,
    )
    .unwrap();
    let err = t.with_base_models(seeded(77, 16, 2, &plain), seeded(55, 8, 1, &plain)).unwrap_err();
    assert!(matches!(err, TrainError::InvalidConfig { name: "base models", .. }), "{err}");
    // The hard labels are delta_kd's own λ; the cache is delta_kd's only.
    let both = KdConfig { hard_label_weight: 0.5, ..KdConfig::with_loss("delta_kd").unwrap() };
    assert!(both.validate().is_err());
    let cache = KdConfig { base_logits_cache_mb: 8, ..KdConfig::default() };
    assert!(cache.validate().is_err());
    // Config round trip: tagged by `loss` like the dense losses.
    let c: MethodConfig =
        serde_json::from_str(r#"{"name": "kd", "divergence": {"loss": "delta_kd", "alpha": 0.5}}"#)
            .unwrap();
    let MethodConfig::Kd(k) = &c else { panic!("{c:?}") };
    assert!(k.is_delta_kd());
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["divergence"]["loss"], "delta_kd");
    assert_eq!(json["divergence"]["alpha"], 0.5);
    assert_eq!(serde_json::from_value::<MethodConfig>(json).unwrap(), c);
    let bad =
        serde_json::from_str::<MethodConfig>(r#"{"name": "kd", "divergence": {"loss": "kl"}}"#);
    let msg = bad.unwrap_err().to_string();
    assert!(msg.contains("delta_kd") && msg.contains("forward_kl"), "{msg}");
    let typo = r#"{"name": "kd", "divergence": {"loss": "delta_kd", "alpah": 0.5}}"#;
    assert!(serde_json::from_str::<MethodConfig>(typo).unwrap_err().to_string().contains("alpah"));
}

fn whp(alpha: f64, target: &str, reduction: &str) -> MethodConfig {
    let text = format!(
        r#"{{"name": "whp", "alpha": {alpha}, "target": "{target}", "reduction": "{reduction}"}}"#
    );
    serde_json::from_str(&text).unwrap()
}

/// WHP with α = 0 and soft targets is forward KL towards the baseline (the base teacher), on the
/// same first batch; with the reinforced model equal to the baseline, α changes nothing; with a
/// different reinforced model it does; sequence and token means agree on equal-length answers.
#[test]
fn whp_reduces_to_forward_kl_towards_the_baseline_and_alpha_acts_through_the_reinforced_model() {
    let plain = Device::flex();
    let reinforced = || seeded(99, 16, 2, &plain);
    let baseline = || seeded(77, 16, 2, &plain);
    let base = || Some((baseline(), baseline()));
    let kd_to_baseline = first_loss(MethodConfig::Kd(KdConfig::default()), baseline(), None);
    let alpha0 = first_loss(whp(0.0, "soft", "token_mean"), reinforced(), base());
    assert!(
        (alpha0 - kd_to_baseline).abs() < 1e-5 * kd_to_baseline,
        "{alpha0} vs {kd_to_baseline}"
    );
    // Every answer here has two counted tokens: the two reductions are the same number.
    let seq = first_loss(whp(0.0, "soft", "sequence_mean"), reinforced(), base());
    assert!((seq - alpha0).abs() < 1e-5 * alpha0, "{seq} vs {alpha0}");
    // Reinforced = baseline: ReLU(v_r − v_b) = 0 whatever α.
    let same = first_loss(whp(5.0, "soft", "token_mean"), baseline(), base());
    assert!((same - kd_to_baseline).abs() < 1e-5 * kd_to_baseline, "{same} vs {kd_to_baseline}");
    // A reinforced model that differs moves the target.
    let pushed = first_loss(whp(5.0, "soft", "token_mean"), reinforced(), base());
    assert!((pushed - alpha0).abs() > 1e-3 * alpha0, "{pushed} vs {alpha0}");
    // Hard targets: the cross-entropy on the generic labels, a different number again.
    let hard = first_loss(whp(5.0, "hard", "sequence_mean"), reinforced(), base());
    assert!(hard.is_finite() && hard > 0.0 && (hard - pushed).abs() > 1e-3 * pushed);
}

#[test]
fn whp_resumes_exactly_and_needs_its_baseline() {
    let h = resume_is_exact("whp", whp(2.0, "hard", "sequence_mean"));
    assert!(h.iter().all(|r| r.extra.contains_key("generic_label_is_data")));
    // No baseline: an error naming it before any step.
    let device = Device::flex().autodiff();
    let mut t = Trainer::<CausalLm>::new(
        config(whp(1.0, "soft", "token_mean"), None),
        seeded(3, 8, 1, &device),
        &device,
    )
    .unwrap()
    .with_teacher(seeded(99, 16, 2, &Device::flex()))
    .unwrap();
    let err = t.fit(&instruction_data(), None).unwrap_err().to_string();
    assert!(err.contains("baseline"), "{err}");
    // A negative α is refused.
    let bad: Result<MethodConfig, _> = serde_json::from_str(r#"{"name": "whp", "alpha": -1.0}"#);
    let err = bad.map_err(|e| e.to_string()).and_then(|m| m.validate().map_err(|e| e.to_string()));
    assert!(err.unwrap_err().contains("alpha"));
}

fn whp_anchored(alpha: f64) -> MethodConfig {
    let text = format!(
        r#"{{"name": "whp", "alpha": {alpha}, "target": "soft", "reduction": "token_mean",
            "anchors": {{"terms": {{"Hogwarts": "the school"}}}}}}"#
    );
    serde_json::from_str(&text).unwrap()
}

/// The first step of `whp` whose baseline reads `views` (the trainer's teacher data).
fn whp_first_step(
    method: MethodConfig,
    views: Option<TeacherDataset>,
) -> Result<StepRecord, TrainError> {
    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let mut c = config(method, None);
    c.steps = 1;
    let t = Trainer::new(c, seeded(1, 8, 1, &device), &device)?
        .with_teacher(seeded(99, 16, 2, &plain))?
        .with_base_models(seeded(77, 16, 2, &plain), seeded(77, 16, 2, &plain))?;
    let mut t = match views {
        Some(v) => t.with_teacher_data(v),
        None => t,
    };
    Ok(t.fit(&instruction_data(), None)?.history[0].clone())
}

/// WHP's anchored terms: the baseline reads a translated copy of each block and every trained
/// row takes the logits of its partner row there. Step 1 recomputed by hand from the same
/// models and batch: views with one token inserted after the prompt's first token (a term that
/// grew by one token), the response rows paired one row later, one block with no pair and one
/// with only its first response row paired. Identity views give the plain `whp` loss.
#[test]
fn whp_with_anchored_views_first_step_by_hand() {
    use burn::tensor::{Bool, TensorData};
    use kd_losses::teachers::whp::{WhpGenericConfig, WhpLossConfig, WhpReduction, WhpTarget};
    use kd_train::data::{BatchOrder, DataCursor, IGNORE_INDEX, TokenBlock};

    let data = instruction_data();
    // Identity views, every row paired: the loss of whp without anchors.
    let same = TeacherDataset {
        blocks: data.clone(),
        pairs: data.blocks.iter().map(|_| (0..SEQ).map(|l| (l, l)).collect()).collect(),
    };
    let plain_loss = whp_first_step(whp(2.0, "soft", "token_mean"), None).unwrap().loss;
    let rec = whp_first_step(whp_anchored(2.0), Some(same)).unwrap();
    assert!((rec.loss - plain_loss).abs() < 1e-6 * plain_loss, "{} vs {plain_loss}", rec.loss);
    assert_eq!(rec.extra["aligned"], 1.0);

    // [1, a, b, 3, r, EOS, 0 …] → [1, a, 17, b, 3, r, EOS, 0 …]: rows 3, 4 ↔ 4, 5.
    let idx = BatchOrder::new(data.len(), 5, DataCursor::default()).next_batch(4);
    let pairs: Vec<Vec<(usize, usize)>> = (0..data.len())
        .map(|i| match i {
            _ if i == idx[0] => vec![],
            _ if i == idx[1] => vec![(3, 4)],
            _ => vec![(3, 4), (4, 5)],
        })
        .collect();
    let blocks = data
        .blocks
        .iter()
        .map(|b| {
            let mut ids = b.input_ids.clone();
            ids.insert(2, 17);
            ids.truncate(SEQ);
            TokenBlock { labels: vec![IGNORE_INDEX; SEQ], input_ids: ids }
        })
        .map(|mut b| {
            b.labels[0] = 4; // one counted label, as a dataset needs
            b
        })
        .collect();
    let views = TeacherDataset { blocks: TokenDataset::new("views", blocks).unwrap(), pairs };
    let rec = whp_first_step(whp_anchored(2.0), Some(views.clone())).unwrap();

    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let student = seeded(1, 8, 1, &device);
    let reinforced = seeded(99, 16, 2, &plain);
    let baseline = seeded(77, 16, 2, &plain);
    let kept = &idx[1..];
    let batch = data.batch(kept, &device);
    let s = student.logits(batch.input_ids.clone()); // [3, SEQ, 32]
    let [b, n, v] = s.dims();
    let r = reinforced.logits(batch.input_ids.clone().inner());
    let base_all = baseline.logits(views.blocks.batch(kept, &plain).input_ids);
    // Row (bi, l) of the baseline's input: the view row paired with l, else row 0 (untrained).
    let mut rows = Vec::new();
    let mut mask = Vec::new();
    for (bi, &i) in kept.iter().enumerate() {
        for l in 0..n {
            let j = views.pairs[i].iter().find(|p| p.0 == l).map(|p| p.1);
            rows.push((bi * n + j.unwrap_or(0)) as i64);
            mask.push(j.is_some());
        }
    }
    let base = base_all
        .reshape([b * n, v])
        .select(0, Tensor::<1, Int>::from_data(TensorData::new(rows, [b * n]), &plain))
        .reshape([b, n, v]);
    let teacher =
        WhpGenericConfig::new().with_alpha(2.0).with_target(WhpTarget::Soft).init().unwrap();
    let probs = teacher.teacher(base, r.slice([0..b, 0..n, 0..v])).unwrap().teacher_probs;
    let trained = mask.iter().filter(|&&m| m).count();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [b, n]), &device);
    let out = WhpLossConfig::new()
        .with_reduction(WhpReduction::TokenMean)
        .init()
        .unwrap()
        .forward(s, probs.autodiff(), mask)
        .unwrap();
    let want = out.loss.into_scalar::<f32>() as f64;
    assert!((rec.loss - want).abs() < 1e-5 * want, "{} vs {want}", rec.loss);
    assert_eq!(trained, 5);
    assert_eq!(rec.tokens, 5);
    // 5 of the batch's 8 counted positions have a partner.
    assert!((rec.extra["aligned"] - 5.0 / 8.0).abs() < 1e-12, "{:?}", rec.extra);
    assert!((rec.loss - plain_loss).abs() > 1e-3 * plain_loss);

    // Anchors without the translated blocks: refused before any step, naming them.
    let err = whp_first_step(whp_anchored(1.0), None).unwrap_err().to_string();
    assert!(err.contains("teacher_data"), "{err}");
    // Anchors with no term, or min_match 0: config errors.
    for bad in [r#"{"terms": {}}"#, r#"{"terms": {"a": "b"}, "min_match": 0}"#] {
        let text = format!(r#"{{"name": "whp", "anchors": {bad}}}"#);
        let m: MethodConfig = serde_json::from_str(&text).unwrap();
        assert!(m.validate().is_err(), "{bad}");
    }
}

/// `whp` with the causal-intervention teacher over `names` replacement names whose first tokens
/// are `20 + 2k` (after a space) and `21 + 2k` (line start); the target is token 9.
fn whp_intervention(names: usize, change_name_back: bool) -> MethodConfig {
    use kd_losses::teachers::whp::{NameFirstTokens, OriginalFirstToken};
    let text = format!(
        r#"{{"name": "whp", "reduction": "token_mean", "intervention": {{"target": "Nine",
            "names": {:?}, "teacher": {{"change_name_back": {change_name_back}}}}}}}"#,
        (0..names).map(|k| format!("name{k}")).collect::<Vec<_>>()
    );
    let mut m: MethodConfig = serde_json::from_str(&text).unwrap();
    let MethodConfig::Whp(w) = &mut m else { unreachable!() };
    w.intervention.as_mut().unwrap().tokens = Some(NameTokens {
        target_forms: vec![vec![9]],
        original: OriginalFirstToken { w_prefix: 9, wo_prefix: 9 },
        replacements: (0..names)
            .map(|k| NameFirstTokens::new(vec![20 + 2 * k], vec![21 + 2 * k]))
            .collect(),
    });
    m
}

/// The first step of `whp` with the intervention teacher (no base models) reading `views`.
fn intervention_first_step(
    method: MethodConfig,
    data: &TokenDataset,
    views: TeacherDataset,
) -> Result<StepRecord, TrainError> {
    let device = Device::flex().autodiff();
    let mut c = config(method, None);
    c.steps = 1;
    let mut t = Trainer::new(c, seeded(1, 8, 1, &device), &device)?
        .with_teacher(seeded(99, 16, 2, &Device::flex()))?
        .with_teacher_data(views);
    Ok(t.fit(data, None)?.history[0].clone())
}

/// The revisit's causal-intervention teacher in training. With one view equal to the text, no
/// mention and no name moves, the target is the teacher's softmax: the first step is `kd`'s.
/// With two name-swapped views of blocks that mention the target (token 9) twice, step 1 is
/// recomputed by hand: the views' rows, the anchor rows before each mention, the majority rows
/// after the first, the rows inside the mentions left out, kd-losses' `RevisitTeacher` and loss.
#[test]
fn whp_intervention_first_step_by_hand() {
    use burn::tensor::{Bool, TensorData};
    use kd_losses::teachers::whp::{
        RevisitInputs, RevisitTeacherConfig, WhpLossConfig, WhpReduction,
    };
    use kd_train::data::{BatchOrder, DataCursor, TokenBlock};

    let data = instruction_data();
    let identity = TeacherDataset {
        blocks: data.clone(),
        pairs: data.blocks.iter().map(|_| (0..SEQ).map(|l| (l, l)).collect()).collect(),
    };
    let kd =
        first_loss(MethodConfig::Kd(KdConfig::default()), seeded(99, 16, 2, &Device::flex()), None);
    let rec = intervention_first_step(whp_intervention(1, false), &data, identity).unwrap();
    assert!((rec.loss - kd).abs() < 1e-5 * kd, "{} vs {kd}", rec.loss);
    assert_eq!(rec.extra["aligned"], 1.0);

    // Blocks with the target at positions 2 and 9; view k writes 20 + 2k there.
    let ids = |i: usize| -> Vec<u32> {
        let mut ids: Vec<u32> = (0..SEQ).map(|l| 4 + ((i * 3 + l * 5) % 19) as u32).collect();
        ids.iter_mut().filter(|t| **t == 9).for_each(|t| *t = 10);
        (ids[2], ids[9]) = (9, 9);
        ids
    };
    let block = |ids: Vec<u32>| {
        let labels = ids[1..].iter().map(|&t| i64::from(t)).chain([4]).collect();
        TokenBlock { input_ids: ids, labels }
    };
    let data = TokenDataset::new("named", (0..40).map(|i| block(ids(i))).collect()).unwrap();
    let views: Vec<TokenBlock> = (0..40)
        .flat_map(|i| {
            (0..2u32).map(move |k| {
                let mut v = ids(i);
                (v[2], v[9]) = (20 + 2 * k, 20 + 2 * k);
                block(v)
            })
        })
        .collect();
    let paired: Vec<(usize, usize)> =
        (0..SEQ).filter(|&l| l != 2 && l != 9).map(|l| (l, l)).collect();
    let views = TeacherDataset {
        blocks: TokenDataset::new("views", views).unwrap(),
        pairs: vec![paired; 80],
    };
    let rec = intervention_first_step(whp_intervention(2, true), &data, views.clone()).unwrap();

    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let student = seeded(1, 8, 1, &device);
    let teacher = seeded(99, 16, 2, &plain);
    let idx = BatchOrder::new(data.len(), 5, DataCursor::default()).next_batch(4);
    let s = student.logits(data.batch(&idx, &device).input_ids); // [4, SEQ, 24]
    let [b, n, _] = s.dims();
    let cf: Vec<Tensor<3>> = (0..2)
        .map(|k| {
            let at: Vec<usize> = idx.iter().map(|&i| 2 * i + k).collect();
            teacher.logits(views.blocks.batch(&at, &plain).input_ids)
        })
        .collect();
    let names = match &whp_intervention(2, true) {
        MethodConfig::Whp(w) => w.intervention.clone().unwrap().tokens.unwrap(),
        _ => unreachable!(),
    };
    let mut inputs = RevisitInputs::new(names.replacements, names.original, b * n);
    for bi in 0..b {
        // Rows 1 and 8 predict a mention of the target; moves by majority after the first.
        inputs.anchor_targets[bi * n + 1] = 9;
        inputs.anchor_targets[bi * n + 8] = 9;
        (0..n).for_each(|l| inputs.majority_allowed[bi * n + l] = l >= 3);
    }
    let targets =
        RevisitTeacherConfig::new().init().unwrap().build(Tensor::stack(cf, 0), &inputs).unwrap();
    let mask: Vec<bool> = (0..b * n).map(|r| r % n != 2 && r % n != 9).collect();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [b, n]), &device);
    let out = WhpLossConfig::new()
        .with_reduction(WhpReduction::TokenMean)
        .init()
        .unwrap()
        .forward(s, targets.teacher_tensor(&plain).autodiff(), mask)
        .unwrap();
    let want = out.loss.into_scalar::<f32>() as f64;
    assert!((rec.loss - want).abs() < 1e-5 * want, "{} vs {want}", rec.loss);
    assert_eq!(rec.tokens, (b * (n - 2)) as u64);
    assert!((rec.extra["aligned"] - 12.0 / 14.0).abs() < 1e-12, "{:?}", rec.extra);
    // The anchor rows (2 of the 12 trained rows of each block) moved name probability back.
    let anchors =
        (0..b * n).filter(|&r| targets.anchor_moved[r] && r % n != 2 && r % n != 9).count();
    assert!((rec.extra["anchor_moved"] - anchors as f64 / (b * 12) as f64).abs() < 1e-12);
    assert!(anchors > 0);

    // Settings: no target, no names, K = 0, the WHP-baseline teacher, anchors beside it.
    for bad in [
        r#"{"target": "", "names": ["a"]}"#,
        r#"{"target": "x"}"#,
        r#"{"target": "x", "names": ["a"], "k": 0}"#,
        r#"{"target": "x", "names": ["a"], "teacher": {"method": "whp_baseline"}}"#,
    ] {
        let m: MethodConfig =
            serde_json::from_str(&format!(r#"{{"name": "whp", "intervention": {bad}}}"#)).unwrap();
        assert!(m.validate().is_err(), "{bad}");
    }
    let both = r#"{"name": "whp", "anchors": {"terms": {"a": "b"}}, "intervention": {"target": "x", "names": ["y"]}}"#;
    assert!(serde_json::from_str::<MethodConfig>(both).unwrap().validate().is_err());
    // Without the names' token ids: an error naming them.
    let mut m = whp_intervention(1, true);
    if let MethodConfig::Whp(w) = &mut m {
        w.intervention.as_mut().unwrap().tokens = None;
    }
    // (K is then unknown: the 2 views per block do not fit the 1 expected.)
    let err = intervention_first_step(m, &data, views).unwrap_err().to_string();
    assert!(err.contains("teacher_data"), "{err}");
}
