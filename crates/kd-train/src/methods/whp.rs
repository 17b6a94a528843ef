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
use crate::text_views::{AnchorTerms, NameTokens, ViewAlignment};
use kd_losses::teachers::whp::{RevisitInputs, RevisitMethod, RevisitTeacherConfig};

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
    /// The revisit's causal-intervention teacher instead of the generic prediction (default:
    /// none): the teacher (the model to unlearn) reads K copies of each block with the target's
    /// name replaced by other names; no baseline, no reinforced model.
    pub intervention: Option<WhpIntervention>,
}

/// `[method.intervention]`: the causal-intervention teacher of *Revisiting Who's Harry Potter*
/// (Liu et al. 2024), [`kd_losses::teachers::whp::RevisitTeacher`], built in training from K
/// name-swapped copies of each block ([`crate::text_views::counterfactual_views`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhpIntervention {
    /// The name whose knowledge is unlearned, as the documents write it (`"Harry Potter"`).
    pub target: String,
    /// Replacement names, one counterfactual copy each (the official config uses 20).
    pub names: Vec<String>,
    /// A file of more replacement names, one per line (after `names`).
    pub names_file: Option<PathBuf>,
    /// Use only the first `k` names (default: all).
    pub k: Option<usize>,
    /// Shortest matched run of tokens whose rows are paired (default `2`, as the official code).
    pub min_match: usize,
    /// The teacher's settings (`move_threshold`, `floor`, `change_name_back`; official values by
    /// default). Method `intervention` only.
    pub teacher: RevisitTeacherConfig,
    /// The names' token ids under the run's tokenizer ([`NameTokens::of`]): set by the caller
    /// before training (`kd distill` does), never read from or written to a config file.
    #[serde(skip)]
    pub tokens: Option<NameTokens>,
}

impl Default for WhpIntervention {
    fn default() -> Self {
        Self {
            target: String::new(),
            names: Vec::new(),
            names_file: None,
            k: None,
            min_match: 2,
            teacher: RevisitTeacherConfig::new(),
            tokens: None,
        }
    }
}

impl WhpIntervention {
    /// The replacement names: `names`, then the file's non-empty lines, the first `k` of them.
    ///
    /// # Errors
    /// [`TrainError::Io`] when the file cannot be read; [`TrainError::InvalidConfig`] when no
    /// name is left, `k = 0`, or a name is the target.
    pub fn replacement_names(&self) -> Result<Vec<String>> {
        let mut names = self.names.clone();
        if let Some(file) = &self.names_file {
            let text = std::fs::read_to_string(file).map_err(|e| TrainError::io(file, e))?;
            names.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
        }
        if let Some(k) = self.k {
            if k == 0 {
                return Err(TrainError::config("intervention.k", "at least 1", 0));
            }
            names.truncate(k);
        }
        if names.is_empty() {
            return Err(TrainError::config(
                "intervention.names",
                "at least one replacement name (names or names_file)",
                "none",
            ));
        }
        if let Some(n) = names.iter().find(|n| n.trim() == self.target.trim()) {
            return Err(TrainError::config("intervention.names", "names other than the target", n));
        }
        Ok(names)
    }
}

impl Default for WhpConfig {
    fn default() -> Self {
        Self {
            alpha: 5.0,
            target: WhpTarget::Hard,
            reduction: WhpReduction::SequenceMean,
            anchors: None,
            intervention: None,
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
        if let Some(iv) = &self.intervention {
            if self.anchors.is_some() {
                return Err(TrainError::config(
                    "intervention",
                    "either anchors (WHP's generic prediction) or intervention (the revisit's teacher)",
                    "both",
                ));
            }
            if iv.target.trim().is_empty() {
                return Err(TrainError::config(
                    "intervention.target",
                    "the name to unlearn",
                    "none",
                ));
            }
            if iv.min_match == 0 {
                return Err(TrainError::config("intervention.min_match", "at least 1", 0));
            }
            if iv.k == Some(0) || (iv.names.is_empty() && iv.names_file.is_none()) {
                return Err(TrainError::config(
                    "intervention.names",
                    "at least one replacement name (names or names_file; k ≥ 1)",
                    "none",
                ));
            }
            if iv.teacher.method != RevisitMethod::Intervention {
                return Err(TrainError::config(
                    "intervention.teacher.method",
                    "intervention (the paper's WHP baseline is not a training mode here)",
                    "whp_baseline",
                ));
            }
            iv.teacher.init()?;
        }
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
        self.config.intervention.is_none()
    }

    fn reads_teacher_data(&self) -> bool {
        self.config.anchors.is_some() || self.config.intervention.is_some()
    }

    fn teacher_data_views(&self) -> usize {
        let tokens = self.config.intervention.as_ref().and_then(|iv| iv.tokens.as_ref());
        tokens.map_or(1, |t| t.replacements.len().max(1))
    }

    fn micro_batch(&mut self, cx: &mut StepContext<'_, S, T>) -> Result<MicroBatchLoss> {
        if let Some(iv) = &self.config.intervention {
            return intervention_step(iv, self.config.reduction, cx);
        }
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
                let partners = kept.iter().map(|(_, r)| r.iter().map(|j| j.unwrap_or(0)).collect());
                partner_rows(logits, partners.collect(), n)
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

/// One micro-batch against the causal-intervention teacher: the teacher reads the K
/// counterfactual views of each block (`cx.teacher_data`, view `k` of block `i` at `i·K + k`),
/// every view's rows are taken at their partners, and [`RevisitTeacherConfig`] builds the target
/// on the host. Trained rows: counted, paired in all K views and (with `change_name_back`) not
/// inside a mention of the target.
fn intervention_step<S: LanguageModel, T: LanguageModel>(
    iv: &WhpIntervention,
    reduction: WhpReduction,
    cx: &mut StepContext<'_, S, T>,
) -> Result<MicroBatchLoss> {
    let teacher = cx.require_teacher("whp")?;
    let tokens = iv.tokens.as_ref().ok_or_else(|| {
        TrainError::config(
            "intervention.tokens",
            "the names' token ids (WhpIntervention::tokens = NameTokens::of(tokenizer, …))",
            "none",
        )
    })?;
    let td = cx.teacher_data.ok_or_else(|| {
        TrainError::config(
            "teacher_data",
            "the counterfactual views of the training set (Trainer::with_teacher_data, \
             text_views::counterfactual_views) for whp's intervention",
            "none",
        )
    })?;
    let k = tokens.replacements.len();
    let idx = cx.next_indices();
    let counted: usize = idx.iter().map(|&i| cx.data.blocks[i].counted()).sum();
    // Per block: each row's partner in every view (None: not trained), anchors, majority rows.
    struct Rows {
        block: usize,
        partners: Vec<Option<Vec<usize>>>,
        anchors: Vec<i64>,
        majority: Vec<bool>,
    }
    let mut kept = Vec::new();
    for &i in &idx {
        let block = &cx.data.blocks[i];
        let n = block.input_ids.len();
        let spans = tokens.mentions(&block.input_ids);
        let mut partners: Vec<Option<Vec<usize>>> = block
            .labels
            .iter()
            .map(|&l| (l != IGNORE_INDEX).then(|| vec![usize::MAX; k]))
            .collect();
        for (v, p) in td.pairs[i * k..(i + 1) * k].iter().enumerate() {
            for &(r, j) in p {
                if let Some(js) = partners[r].as_mut() {
                    js[v] = j;
                }
            }
        }
        for (r, slot) in partners.iter_mut().enumerate() {
            let inside = spans.iter().any(|&(s, e)| (s..e).contains(&r));
            let unpaired = slot.as_ref().is_some_and(|js| js.contains(&usize::MAX));
            if unpaired || (inside && iv.teacher.change_name_back) {
                *slot = None;
            }
        }
        if partners.iter().all(Option::is_none) {
            continue;
        }
        let mut anchors = vec![-1; n];
        let mut majority = vec![false; n];
        for &(s, e) in &spans {
            if s > 0 {
                anchors[s - 1] = i64::from(block.input_ids[s]);
            }
            majority.iter_mut().skip(e).for_each(|m| *m = true);
        }
        kept.push(Rows { block: i, partners, anchors, majority });
    }
    if kept.is_empty() {
        let batch = cx.data.batch(&idx, cx.device);
        let zero = cx.student.logits(batch.input_ids).sum().mul_scalar(0.0);
        return Ok(MicroBatchLoss { loss: zero, tokens: 0, metrics: vec![("aligned", 0.0)] });
    }
    let kept_idx: Vec<usize> = kept.iter().map(|r| r.block).collect();
    let batch = cx.data.batch(&kept_idx, cx.device);
    let student = cx.student.logits(batch.input_ids); // [b, n, v]
    let [b, n, v] = student.dims();
    let plain = cx.plain_device();
    let mut views = Vec::with_capacity(k);
    for view in 0..k {
        let at: Vec<usize> = kept_idx.iter().map(|&i| i * k + view).collect();
        let logits = logits_across(teacher, td.blocks.batch(&at, &plain).input_ids);
        let vt = logits.dims()[2];
        if vt < v {
            return Err(TrainError::config(
                "teacher",
                "a teacher with the student's vocabulary",
                format!("{vt} tokens for the student's {v}"),
            ));
        }
        let partners = kept
            .iter()
            .map(|r| r.partners.iter().map(|js| js.as_ref().map_or(0, |js| js[view])).collect())
            .collect();
        views.push(partner_rows(logits, partners, n).slice([0..b, 0..n, 0..v]));
    }
    let mut inputs = RevisitInputs::new(tokens.replacements.clone(), tokens.original, b * n);
    inputs.anchor_targets = kept.iter().flat_map(|r| r.anchors.iter().copied()).collect();
    inputs.majority_allowed = kept.iter().flat_map(|r| r.majority.iter().copied()).collect();
    let trained: Vec<bool> =
        kept.iter().flat_map(|r| r.partners.iter().map(Option::is_some)).collect();
    let targets = iv.teacher.init()?.build(Tensor::stack(views, 0), &inputs)?;
    let moved = |f: &dyn Fn(usize) -> bool| {
        let hits = (0..b * n).filter(|&r| trained[r] && f(r)).count();
        hits as f64 / trained.iter().filter(|&&t| t).count().max(1) as f64
    };
    let anchor_moved = moved(&|r| targets.anchor_moved[r]);
    let majority_moved =
        moved(&|r| targets.majority_moved[r] != kd_losses::teachers::whp::MajorityMove::None);
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(trained, [b, n]), cx.device);
    let out = WhpLossConfig::new().with_reduction(reduction).init()?.forward(
        student,
        targets.teacher_tensor(&plain).autodiff(),
        mask,
    )?;
    Ok(MicroBatchLoss {
        loss: out.loss,
        tokens: out.n_valid as u64,
        metrics: vec![
            ("aligned", out.n_valid as f64 / counted.max(1) as f64),
            ("anchor_moved", anchor_moved),
            ("majority_moved", majority_moved),
        ],
    })
}

/// Rows of a view's logits `[b, n_view, v]` at the original rows: row `(bi, l)` of the result is
/// row `partners[bi][l]` of view `bi` (`n` partners per view; untrained rows point anywhere).
fn partner_rows(logits: Tensor<3>, partners: Vec<Vec<usize>>, n: usize) -> Tensor<3> {
    let [b, nv, v] = logits.dims();
    let flat: Vec<i64> = partners
        .iter()
        .enumerate()
        .flat_map(|(bi, js)| js.iter().map(move |&j| (bi * nv + j) as i64))
        .collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(flat, [b * n]), &logits.device());
    logits.reshape([b * nv, v]).select(0, index).reshape([b, n, v])
}
