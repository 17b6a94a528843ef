//! `whp`: approximate unlearning by distillation from the "Who's Harry Potter" generic-prediction
//! teacher (Eldan & Russinovich 2023). The teacher is the **reinforced** model (the baseline
//! fine-tuned further on the documents to forget), the base teacher is the **baseline**, and the
//! student (started from the baseline) is trained on those documents towards
//!
//! ```text
//! v_generic = v_base − α · ReLU(v_reinforced − v_base)                (WHP eq. 1, per position)
//! target    = one_hot(argmax v_generic)        (target = "hard", WHP's fine-tuning labels)
//!           = softmax(v_generic)               (target = "soft")
//! loss      = mean_b [ Σ_l m_bl · KL(target_bl ‖ softmax(s_bl)) / Σ_l m_bl ]   (sequence_mean)
//!           = Σ m · KL / Σ m                                                   (token_mean)
//! ```
//!
//! (`KL` of a one-hot target is the cross-entropy on the generic label.) Tokens the reinforced
//! model has learned to expect beyond the baseline, the content of the documents, are pushed
//! down; everything else follows the baseline. `m` marks the counted positions of the data.
//!
//! The recipe: `kd train` the baseline on the documents to forget → the reinforced model;
//! `kd distill --method whp` with `[teacher]` = the reinforced model, `[base_teacher]` = the
//! baseline, `[student]` = the baseline, `data.train` = the documents. With `[method.anchors]`
//! the baseline reads WHP's **anchored-term translation** of each block (the documents'
//! idiosyncratic terms replaced by generic ones, [`crate::text_views::anchored_views`], given to
//! the trainer with [`crate::Trainer::with_teacher_data`]) and its predictions are taken at the
//! aligned rows; counted positions without a partner in the translation are not trained.
//! Without anchors both teachers read the same text: WHP's reinforcement-bootstrapping half. The construction and the loss are
//! [`kd_losses::teachers::whp`], checked against the golden file `whp_teacher.json`.
//!
//! Papers: Eldan & Russinovich, *Who's Harry Potter? Approximate Unlearning in LLMs*,
//! <https://arxiv.org/abs/2310.02238> (no official code); the student loss follows the revisit's
//! official code (Liu et al. 2024, <https://github.com/UCSB-NLP-Chang/causal_unlearn>,
//! `dataloader.py`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use kd_losses::teachers::whp::{WhpGenericConfig, WhpLossConfig, WhpReduction, WhpTarget};
use serde::{Deserialize, Serialize};

use crate::data::IGNORE_INDEX;
use crate::error::{Result, TrainError};
use crate::methods::{MicroBatchLoss, StepContext, TeacherUse};
use crate::model::{LanguageModel, logits_across};
use crate::text_views::{AnchorTerms, ViewAlignment};

/// Config of [`Whp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhpConfig {
    /// Strength `α ≥ 0` of the push away from the reinforced model (default `5`, as public
    /// re-implementations use; `0` distils the baseline itself).
    pub alpha: f64,
    /// `hard` (one-hot of the generic label, WHP; default) or `soft` (`softmax(v_generic)`).
    pub target: WhpTarget,
    /// `sequence_mean` (the official reduction; default) or `token_mean`.
    pub reduction: WhpReduction,
    /// WHP's anchored terms: the baseline reads the translated text (default: none, both
    /// teachers read the documents as they are).
    pub anchors: Option<WhpAnchors>,
}

impl Default for WhpConfig {
    fn default() -> Self {
        Self {
            alpha: 5.0,
            target: WhpTarget::Hard,
            reduction: WhpReduction::SequenceMean,
            anchors: None,
        }
    }
}

/// `[method.anchors]`: the dictionary of WHP's anchored terms and how the translated blocks are
/// aligned to the original ones ([`crate::text_views`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhpAnchors {
    /// Term → generic translation (`Hogwarts = "the school"`).
    pub terms: BTreeMap<String, String>,
    /// A JSON object of more terms (`{"Hogwarts": "the school"}`); a term may not be in both.
    pub file: Option<PathBuf>,
    /// Shortest matched run of tokens whose rows are paired (default `2`, as the revisit's code).
    pub min_match: usize,
    /// Also pair the row after a translated term's last token (default `true`).
    pub extend_after_term: bool,
    /// Leave out rows that predict a term already translated earlier in the block (default
    /// `true`).
    pub skip_repeated_terms: bool,
}

impl Default for WhpAnchors {
    fn default() -> Self {
        let a = ViewAlignment::default();
        Self {
            terms: BTreeMap::new(),
            file: None,
            min_match: a.min_match,
            extend_after_term: a.extend_after_gap,
            skip_repeated_terms: a.skip_repeated_terms,
        }
    }
}

impl WhpAnchors {
    /// The dictionary: `terms` and the file's.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when there is no term, a term is in both, or the file is not
    /// a JSON object of strings; [`TrainError::Io`] when the file cannot be read.
    pub fn load(&self) -> Result<AnchorTerms> {
        let mut all: Vec<(String, String)> =
            self.terms.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(file) = &self.file {
            all.extend(AnchorTerms::from_json_file(file)?.pairs().iter().cloned());
        }
        AnchorTerms::new(all)
    }

    /// The alignment settings.
    pub fn alignment(&self) -> ViewAlignment {
        ViewAlignment {
            min_match: self.min_match,
            extend_after_gap: self.extend_after_term,
            skip_repeated_terms: self.skip_repeated_terms,
        }
    }
}

impl WhpConfig {
    /// Checks `alpha`.
    ///
    /// # Errors
    /// [`TrainError::Loss`] when `alpha` is negative or not finite;
    /// [`TrainError::InvalidConfig`] for anchors without terms or with `min_match = 0`.
    pub fn validate(&self) -> Result<()> {
        WhpGenericConfig::new().with_alpha(self.alpha).with_target(self.target).init()?;
        if let Some(a) = &self.anchors {
            if a.min_match == 0 {
                return Err(TrainError::config("anchors.min_match", "at least 1", 0));
            }
            if a.terms.is_empty() && a.file.is_none() {
                return Err(TrainError::config(
                    "anchors",
                    "terms (anchors.terms) or a dictionary file (anchors.file)",
                    "neither",
                ));
            }
        }
        Ok(())
    }

    /// The method.
    ///
    /// # Errors
    /// As [`WhpConfig::validate`].
    pub fn init(&self, _steps: u64) -> Result<Whp> {
        self.validate()?;
        Ok(Whp { config: self.clone() })
    }
}

/// Distillation from WHP's generic-prediction teacher (see the module docs).
#[derive(Debug, Clone)]
pub struct Whp {
    config: WhpConfig,
}

impl<S: LanguageModel, T: LanguageModel> super::Method<S, T> for Whp {
    fn name(&self) -> &'static str {
        "whp"
    }

    fn teacher_use(&self) -> TeacherUse {
        TeacherUse::Required
    }

    fn uses_base_models(&self) -> bool {
        true
    }

    fn reads_teacher_data(&self) -> bool {
        self.config.anchors.is_some()
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        let reinforced = cx.require_teacher("whp")?;
        let base = cx.base.ok_or_else(|| {
            TrainError::config(
                "base models",
                "the baseline model as the base teacher (Trainer::with_base_models) for whp",
                "none",
            )
        })?;
        let idx = cx.next_indices();
        let views = match (&self.config.anchors, cx.teacher_data) {
            (None, _) => None,
            (Some(_), Some(td)) => Some(td),
            (Some(_), None) => {
                return Err(TrainError::config(
                    "teacher_data",
                    "the anchored-term translation of the training set \
                     (Trainer::with_teacher_data, text_views::anchored_views) for whp's anchors",
                    "none",
                ));
            }
        };
        // Trained rows: counted by the data and, with anchors, paired with a translated row.
        let rows = |i: usize| -> Vec<Option<usize>> {
            let labels = &cx.data.blocks[i].labels;
            let mut r = vec![None; labels.len()];
            match views {
                None => (0..labels.len()).for_each(|l| r[l] = Some(l)),
                Some(td) => td.pairs[i].iter().for_each(|&(l, j)| r[l] = Some(j)),
            }
            r.iter_mut()
                .zip(labels)
                .filter(|(_, t)| **t == IGNORE_INDEX)
                .for_each(|(x, _)| *x = None);
            r
        };
        let counted: usize = idx.iter().map(|&i| cx.data.blocks[i].counted()).sum();
        // Blocks with a trained row (a sequence mean of an empty sequence is 0/0).
        let kept: Vec<(usize, Vec<Option<usize>>)> = idx
            .iter()
            .map(|&i| (i, rows(i)))
            .filter(|(_, r)| r.iter().any(Option::is_some))
            .collect();
        if kept.is_empty() {
            let batch = cx.data.batch(&idx, cx.device);
            let zero = cx.student.logits(batch.input_ids).sum().mul_scalar(0.0);
            let metrics = if views.is_some() { vec![("aligned", 0.0)] } else { Vec::new() };
            return Ok(MicroBatchLoss { loss: zero, tokens: 0, metrics });
        }
        let kept_idx: Vec<usize> = kept.iter().map(|(i, _)| *i).collect();
        let batch = cx.data.batch(&kept_idx, cx.device);
        let (student, reinforced_logits) =
            cx.student_and_teacher_logits(reinforced, batch.input_ids.clone())?; // [b, n, v]
        let [b, n, v] = student.dims();
        let plain = cx.plain_device();
        let base_logits = match views {
            None => logits_across(&base.teacher, batch.input_ids.clone().inner()),
            Some(td) => {
                // The baseline reads the translations; row (b, l) takes its partner row's logits.
                let view = td.blocks.batch(&kept_idx, &plain).input_ids;
                let logits = logits_across(&base.teacher, view); // [b, n_view, v_base]
                let [_, nv, vb] = logits.dims();
                let flat: Vec<i64> = kept
                    .iter()
                    .enumerate()
                    .flat_map(|(bi, (_, r))| {
                        r.iter().map(move |j| (bi * nv + j.unwrap_or(0)) as i64)
                    })
                    .collect();
                let index = Tensor::<1, Int>::from_data(TensorData::new(flat, [b * n]), &plain);
                logits.reshape([b * nv, vb]).select(0, index).reshape([b, n, vb])
            }
        };
        if base_logits.dims()[2] < v {
            return Err(TrainError::config(
                "base_teacher",
                "a baseline with the student's vocabulary",
                format!("{} tokens for the student's {v}", base_logits.dims()[2]),
            ));
        }
        let base_logits = base_logits.slice([0..b, 0..n, 0..v]);
        let generic = WhpGenericConfig::new()
            .with_alpha(self.config.alpha)
            .with_target(self.config.target)
            .init()?
            .teacher(base_logits, reinforced_logits.inner())?;
        let trained: Vec<bool> =
            kept.iter().flat_map(|(_, r)| r.iter().map(Option::is_some)).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(trained, [b, n]), &plain);
        let agree = agreement(&generic.generic_labels, &batch.labels.clone().inner(), &mask);
        let out = WhpLossConfig::new().with_reduction(self.config.reduction).init()?.forward(
            student,
            generic.teacher_probs.autodiff(),
            Tensor::<2, Bool>::from_data(mask.into_data(), cx.device),
        )?;
        let mut metrics = vec![("generic_label_is_data", agree)];
        if views.is_some() {
            metrics.push(("aligned", out.n_valid as f64 / counted.max(1) as f64));
        }
        Ok(MicroBatchLoss { loss: out.loss, tokens: out.n_valid as u64, metrics })
    }
}

/// Fraction of the counted positions whose generic label is the data's next token.
fn agreement(generic: &Tensor<2, Int>, labels: &Tensor<2, Int>, mask: &Tensor<2, Bool>) -> f64 {
    let same = generic.clone().equal(labels.clone()).bool_and(mask.clone());
    let counted = mask.clone().int().sum().into_scalar::<i64>();
    if counted == 0 {
        return 0.0;
    }
    same.int().sum().into_scalar::<i64>() as f64 / counted as f64
}
