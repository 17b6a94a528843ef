//! Rewritten copies of training blocks and their token alignment to the original: the text side
//! of WHP's anchored-term translation (the baseline reads the documents with their idiosyncratic
//! terms replaced by generic ones, and its predictions are used at the original positions,
//! [`anchored_views`]) and of the revisit's causal intervention (the model reads K copies with
//! the target's name replaced by other names, [`counterfactual_views`] and [`NameTokens`]).
//!
//! A block's view is made on the text: the block's ids are cut at special tokens (BOS, EOS,
//! padding), each piece is decoded, rewritten by [`AnchorTerms::translate`] and encoded again,
//! and the pieces are joined with the same special tokens. The view is then aligned to the
//! original by [`matching_blocks`] (the Ratcliff–Obershelp matching of Python's
//! `difflib.SequenceMatcher.get_matching_blocks`, which the official code of *Revisiting Who's
//! Harry Potter* uses for the same purpose) and [`align_rows`]: row `i` of the original (the
//! prediction after token `i`) is paired with row `j` of the view when tokens `i` and `j` lie in
//! one matched run of at least `min_match` tokens, so both rows have read the same text since
//! the last rewritten term and predict the same next token, or the term's two versions.
//!
//! ```
//! use kd_train::text_views::{AnchorTerms, align_rows, matching_blocks};
//!
//! let terms = AnchorTerms::new([("Hogwarts".to_string(), "the school".to_string())])?;
//! assert_eq!(terms.translate("At Hogwarts, Hogwartsian rules."), "At the school, Hogwartsian rules.");
//!
//! // "a b T c d" → "a b X Y c d": the term T became two tokens.
//! let (orig, view) = ([1, 2, 9, 3, 4], [1, 2, 7, 8, 3, 4]);
//! let m = matching_blocks(&orig, &view);
//! assert_eq!((m[0].a, m[0].b, m[0].size), (0, 0, 2));
//! assert_eq!((m[1].a, m[1].b, m[1].size), (3, 4, 2));
//! // Row 1 (after "b", predicting the term) and rows 3, 4 are paired; row 2 (after the term
//! // itself) is paired with the view's row after the term's last token.
//! assert_eq!(align_rows(&orig, &view, 2, true), [(0, 0), (1, 1), (2, 3), (3, 4), (4, 5)]);
//! # Ok::<(), kd_train::TrainError>(())
//! ```

use std::collections::{BTreeMap, HashMap};

use kd_losses::teachers::whp::{NameFirstTokens, OriginalFirstToken};

use crate::data::{TextDecoder, TextEncoder, TokenBlock, TokenDataset};
use crate::error::{Result, TrainError};
use crate::methods::cross_tokenizer::TeacherDataset;

/// A run of equal tokens: `a[a..a + size] == b[b..b + size]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchBlock {
    /// Start in the first sequence.
    pub a: usize,
    /// Start in the second sequence.
    pub b: usize,
    /// Length (at least 1).
    pub size: usize,
}

/// The matching runs of `a` and `b`, ascending and non-overlapping: the longest common run,
/// then recursively the longest runs left of it and right of it (on ties the earliest in `a`,
/// then in `b`), with adjacent runs merged. This is `difflib.SequenceMatcher(None, a, b,
/// autojunk=False).get_matching_blocks()` without its final zero-length sentinel (difflib's
/// default `autojunk` ignores tokens that fill over 1 % of a sequence of 200 or more; they are
/// matched here like any other).
pub fn matching_blocks(a: &[u32], b: &[u32]) -> Vec<MatchBlock> {
    let mut b2j: HashMap<u32, Vec<usize>> = HashMap::new();
    for (j, &t) in b.iter().enumerate() {
        b2j.entry(t).or_default().push(j);
    }
    let mut found = Vec::new();
    let mut queue = vec![(0, a.len(), 0, b.len())];
    while let Some((alo, ahi, blo, bhi)) = queue.pop() {
        let m = longest_match(a, &b2j, alo, ahi, blo, bhi);
        if m.size == 0 {
            continue;
        }
        if alo < m.a && blo < m.b {
            queue.push((alo, m.a, blo, m.b));
        }
        if m.a + m.size < ahi && m.b + m.size < bhi {
            queue.push((m.a + m.size, ahi, m.b + m.size, bhi));
        }
        found.push(m);
    }
    found.sort_by_key(|m| (m.a, m.b));
    let mut merged: Vec<MatchBlock> = Vec::with_capacity(found.len());
    for m in found {
        match merged.last_mut() {
            Some(p) if p.a + p.size == m.a && p.b + p.size == m.b => p.size += m.size,
            _ => merged.push(m),
        }
    }
    merged
}

/// difflib's `find_longest_match` without junk: the longest run in `a[alo..ahi]`,
/// `b[blo..bhi]`, earliest in `a`, then in `b`.
fn longest_match(
    a: &[u32],
    b2j: &HashMap<u32, Vec<usize>>,
    alo: usize,
    ahi: usize,
    blo: usize,
    bhi: usize,
) -> MatchBlock {
    let mut best = MatchBlock { a: alo, b: blo, size: 0 };
    // Length of the run ending at (i − 1, j), by j.
    let mut prev: HashMap<usize, usize> = HashMap::new();
    for (i, t) in a.iter().enumerate().take(ahi).skip(alo) {
        let mut next = HashMap::new();
        for &j in b2j.get(t).map_or(&[][..], Vec::as_slice) {
            if j < blo {
                continue;
            }
            if j >= bhi {
                break;
            }
            let k = j.checked_sub(1).and_then(|p| prev.get(&p)).copied().unwrap_or(0) + 1;
            next.insert(j, k);
            if k > best.size {
                best = MatchBlock { a: i + 1 - k, b: j + 1 - k, size: k };
            }
        }
        prev = next;
    }
    best
}

/// Row pairs `(i, j)`: row `i` of `orig` (the prediction after token `i`) and row `j` of `view`
/// read the same text since the last difference. Every position of a [`matching_blocks`] run of
/// at least `min_match` tokens is paired; with `extend_after_gap`, so is the position just before
/// such a run when both sequences differ there (the last token of a rewritten term in each: both
/// rows predict the run's first token). Ascending in both.
pub fn align_rows(
    orig: &[u32],
    view: &[u32],
    min_match: usize,
    extend_after_gap: bool,
) -> Vec<(usize, usize)> {
    pairs_of(&matching_blocks(orig, view), min_match, extend_after_gap)
}

/// [`align_rows`] from the matching runs already found.
fn pairs_of(
    blocks: &[MatchBlock],
    min_match: usize,
    extend_after_gap: bool,
) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    let (mut end_a, mut end_b) = (0, 0);
    for m in blocks {
        if m.size >= min_match.max(1) {
            if extend_after_gap && m.a > end_a && m.b > end_b && m.a > 0 && m.b > 0 {
                pairs.push((m.a - 1, m.b - 1));
            }
            pairs.extend((0..m.size).map(|t| (m.a + t, m.b + t)));
        }
        (end_a, end_b) = (m.a + m.size, m.b + m.size);
    }
    pairs
}

/// Rows of `orig` (within `pairs`) that predict the first token of a rewritten stretch whose
/// original tokens already appeared as a rewritten stretch earlier in the block (a repeated
/// term).
fn repeated_term_rows(orig: &[u32], view: &[u32], blocks: &[MatchBlock]) -> Vec<usize> {
    let mut seen: Vec<&[u32]> = Vec::new();
    let mut rows = Vec::new();
    let mut end_a = 0;
    for m in blocks.iter().chain([&MatchBlock { a: orig.len(), b: view.len(), size: 0 }]) {
        if m.a > end_a && end_a > 0 {
            let stretch = &orig[end_a..m.a];
            if seen.contains(&stretch) {
                rows.push(end_a - 1);
            } else {
                seen.push(stretch);
            }
        }
        end_a = m.a + m.size;
    }
    rows
}

/// WHP's anchored terms: idiosyncratic expressions of the documents and their generic
/// translations (`"Hogwarts"` → `"the school"`), applied to whole words, longest term first,
/// case-sensitively, in one pass (a translation is never translated again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorTerms {
    /// `(term, translation)`, longest term first.
    terms: Vec<(String, String)>,
}

impl AnchorTerms {
    /// The dictionary of `(term, translation)` pairs.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when there is no term, a term is empty (or only spaces) or
    /// a term is given twice.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut terms: Vec<(String, String)> = pairs.into_iter().collect();
        if terms.is_empty() {
            return Err(TrainError::config("anchors", "at least one anchored term", "none"));
        }
        if let Some((t, _)) = terms.iter().find(|(t, _)| t.trim().is_empty()) {
            return Err(TrainError::config("anchors", "non-empty terms", format!("{t:?}")));
        }
        terms.sort_by(|x, y| y.0.len().cmp(&x.0.len()).then_with(|| x.0.cmp(&y.0)));
        if let Some(w) = terms.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(TrainError::config("anchors", "each term once", format!("{:?}", w[0].0)));
        }
        Ok(Self { terms })
    }

    /// Reads a JSON object `{"term": "translation", …}`.
    ///
    /// # Errors
    /// [`TrainError::Io`] when the file cannot be read; [`TrainError::InvalidConfig`] when it is
    /// not such an object, or as [`AnchorTerms::new`].
    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let map: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
            TrainError::config(
                "anchors.file",
                "a JSON object of term → translation strings",
                format!("{}: {e}", path.display()),
            )
        })?;
        Self::new(map)
    }

    /// The `(term, translation)` pairs, longest term first.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.terms
    }

    /// Number of terms.
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Always `false` (a dictionary has at least one term).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// `text` with every whole-word occurrence of a term replaced by its translation. A match
    /// must not continue a word on either side (letters, digits and `_` continue words), so
    /// `Hogwarts` is translated in "Hogwarts," and "Hogwarts's" but not in "Hogwartsian".
    pub fn translate(&self, text: &str) -> String {
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        'scan: while i < text.len() {
            let before = text[..i].chars().next_back();
            if !word(before) {
                for (term, translation) in &self.terms {
                    let rest = &text[i..];
                    if rest.starts_with(term.as_str()) && !word(rest[term.len()..].chars().next()) {
                        out.push_str(translation);
                        i += term.len();
                        continue 'scan;
                    }
                }
            }
            let c = text[i..].chars().next().expect("i is a char boundary below len");
            out.push(c);
            i += c.len_utf8();
        }
        out
    }
}

/// How views are aligned to the original blocks ([`anchored_views`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewAlignment {
    /// Shortest matched run whose positions are paired (the revisit's official code keeps runs
    /// longer than one token: `2`).
    pub min_match: usize,
    /// Also pair the rows after a rewritten term's last token ([`align_rows`]).
    pub extend_after_gap: bool,
    /// Leave out the rows that predict a term already rewritten earlier in the block (there the
    /// original continuation follows from the context, "my name is Harry", not from knowing the
    /// documents).
    pub skip_repeated_terms: bool,
}

impl Default for ViewAlignment {
    fn default() -> Self {
        Self { min_match: 2, extend_after_gap: true, skip_repeated_terms: true }
    }
}

/// What [`anchored_views`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ViewStats {
    /// Blocks whose view differs from the original.
    pub rewritten_blocks: usize,
    /// Counted positions of the original blocks.
    pub counted: usize,
    /// Counted positions paired with a view row (in every view, for [`counterfactual_views`]).
    pub paired: usize,
    /// Views cut to the block length where more than padding was cut.
    pub truncated: usize,
}

/// The view of `ids`: cut at the ids in `specials`, each piece decoded, rewritten by `rewrite`
/// and encoded, the pieces joined with the same special ids.
///
/// # Errors
/// The tokenizer's.
pub fn rewritten_ids<Tok: TextEncoder + TextDecoder + ?Sized>(
    ids: &[u32],
    tok: &Tok,
    specials: &[u32],
    rewrite: impl Fn(&str) -> String,
) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(ids.len() + ids.len() / 8);
    let flush = |piece: &[u32], out: &mut Vec<u32>| -> Result<()> {
        if !piece.is_empty() {
            let text = tok.decode_text(piece)?;
            let new = rewrite(&text);
            out.extend(if new == text { piece.to_vec() } else { tok.encode_text(&new)? });
        }
        Ok(())
    };
    let mut start = 0;
    for (i, t) in ids.iter().enumerate() {
        if specials.contains(t) {
            flush(&ids[start..i], &mut out)?;
            out.push(*t);
            start = i + 1;
        }
    }
    flush(&ids[start..], &mut out)?;
    Ok(out)
}

/// Special ids a view keeps in place: BOS, EOS and `pad`.
fn specials<Tok: TextEncoder + ?Sized>(tok: &Tok, pad: u32) -> Vec<u32> {
    [tok.bos_id(), tok.eos_id(), Some(pad)].into_iter().flatten().collect()
}

/// `block` rewritten ([`rewritten_ids`]) and cut or padded with `pad` to its length (counted in
/// `stats.truncated` when more than padding was cut).
fn view_ids<Tok: TextEncoder + TextDecoder + ?Sized>(
    block: &TokenBlock,
    tok: &Tok,
    pad: u32,
    rewrite: impl Fn(&str) -> String,
    stats: &mut ViewStats,
) -> Result<Vec<u32>> {
    let n = block.input_ids.len();
    let mut view = rewritten_ids(&block.input_ids, tok, &specials(tok, pad), rewrite)?;
    if view.iter().skip(n).any(|&t| t != pad) {
        stats.truncated += 1;
    }
    view.resize(n, pad);
    Ok(view)
}

/// A view as a teacher block: its ids, labelled with their next ids (unused by the methods).
fn view_block(view: Vec<u32>) -> TokenBlock {
    let labels = view.iter().skip(1).map(|&t| i64::from(t)).chain([crate::data::IGNORE_INDEX]);
    TokenBlock { labels: labels.collect(), input_ids: view }
}

/// The anchored-term views of `data` for WHP's baseline: block `i` of the result is block `i`
/// translated by `terms` ([`rewritten_ids`], cut or padded with `pad` to the block length), with
/// its row pairs ([`align_rows`], less the repeated terms' rows when asked, and only rows whose
/// label counts). A block no term touches is its own view with every row paired.
///
/// # Errors
/// The tokenizer's; [`TrainError::EmptyDataset`] when `data` is empty.
pub fn anchored_views<Tok: TextEncoder + TextDecoder + ?Sized>(
    data: &TokenDataset,
    tok: &Tok,
    terms: &AnchorTerms,
    align: ViewAlignment,
    pad: u32,
) -> Result<(TeacherDataset, ViewStats)> {
    let n = data.seq_len();
    let mut stats = ViewStats::default();
    let (mut blocks, mut pairs) = (Vec::with_capacity(data.len()), Vec::with_capacity(data.len()));
    for block in &data.blocks {
        let view = view_ids(block, tok, pad, |t| terms.translate(t), &mut stats)?;
        let counted = |i: usize| block.labels[i] != crate::data::IGNORE_INDEX;
        stats.counted += (0..n).filter(|&i| counted(i)).count();
        if view == block.input_ids {
            let p: Vec<(usize, usize)> = (0..n).filter(|&i| counted(i)).map(|i| (i, i)).collect();
            stats.paired += p.len();
            blocks.push(block.clone());
            pairs.push(p);
            continue;
        }
        stats.rewritten_blocks += 1;
        let runs = matching_blocks(&block.input_ids, &view);
        let drop = if align.skip_repeated_terms {
            repeated_term_rows(&block.input_ids, &view, &runs)
        } else {
            vec![]
        };
        let p: Vec<(usize, usize)> = pairs_of(&runs, align.min_match, align.extend_after_gap)
            .into_iter()
            .filter(|&(i, _)| counted(i) && !drop.contains(&i))
            .collect();
        stats.paired += p.len();
        blocks.push(view_block(view));
        pairs.push(p);
    }
    let blocks = TokenDataset::new("anchored views", blocks)?;
    Ok((TeacherDataset { blocks, pairs }, stats))
}

/// The token ids a causal-intervention teacher needs about the names
/// ([`kd_losses::teachers::whp::RevisitTeacher`]): how the target is written in tokens, and the
/// first tokens of the target and of each replacement name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NameTokens {
    /// The target's token sequences (after a space, at a line start; one entry when both are
    /// the same): its mentions in a block are found by these.
    pub target_forms: Vec<Vec<u32>>,
    /// The target's first token after a space and at a line start.
    pub original: OriginalFirstToken,
    /// Per replacement name, the first token of each of its words, both ways.
    pub replacements: Vec<NameFirstTokens>,
}

/// The tokens of `word` after `context`: `encode(context + word)` less `encode(context)`, which
/// must be its prefix.
fn tokens_after<Tok: TextEncoder + ?Sized>(
    tok: &Tok,
    context: &str,
    word: &str,
) -> Result<Vec<u32>> {
    let ctx = tok.encode_text(context)?;
    let full = tok.encode_text(&format!("{context}{word}"))?;
    match full.strip_prefix(ctx.as_slice()) {
        Some(rest) if !rest.is_empty() => Ok(rest.to_vec()),
        _ => Err(TrainError::config(
            "names",
            "a name the tokenizer writes apart from the text before it",
            format!("{word:?} after {context:?}"),
        )),
    }
}

impl NameTokens {
    /// The tokens of `target` and `replacements` under `tok`: each word after a space (`"a"`
    /// before it, then `" word"`) and at a line start (`"a\n"` before it), as the revisit's official code takes a
    /// name's first token with and without a leading space.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when a name is empty or the tokenizer merges it with the
    /// text before it; the tokenizer's errors.
    pub fn of<Tok: TextEncoder + ?Sized>(
        tok: &Tok,
        target: &str,
        replacements: &[String],
    ) -> Result<Self> {
        let first_tokens = |name: &str| -> Result<NameFirstTokens> {
            let words: Vec<&str> = name.split_whitespace().collect();
            if words.is_empty() {
                return Err(TrainError::config("names", "non-empty names", format!("{name:?}")));
            }
            let mut w = Vec::new();
            let mut wo = Vec::new();
            for word in words {
                w.push(tokens_after(tok, "a", &format!(" {word}"))?[0] as usize);
                wo.push(tokens_after(tok, "a\n", word)?[0] as usize);
            }
            Ok(NameFirstTokens::new(w, wo))
        };
        let target = target.trim();
        let t = first_tokens(target)?;
        let mut target_forms = vec![tokens_after(tok, "a", &format!(" {target}"))?];
        let line = tokens_after(tok, "a\n", target)?;
        if !target_forms.contains(&line) {
            target_forms.push(line);
        }
        let replacements = replacements.iter().map(|n| first_tokens(n)).collect::<Result<_>>()?;
        let original = OriginalFirstToken { w_prefix: t.w_prefix[0], wo_prefix: t.wo_prefix[0] };
        Ok(Self { target_forms, original, replacements })
    }

    /// The target's mentions in `ids`: `[start, end)` token spans, ascending, not overlapping
    /// (the longer form first where two start at one position).
    pub fn mentions(&self, ids: &[u32]) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let hit = self
                .target_forms
                .iter()
                .filter(|f| !f.is_empty() && ids[i..].starts_with(f))
                .map(Vec::len)
                .max();
            match hit {
                Some(len) => {
                    spans.push((i, i + len));
                    i += len;
                }
                None => i += 1,
            }
        }
        spans
    }
}

/// The counterfactual views of `data` for the causal-intervention teacher: block `i`'s view `k`
/// is block `i` with every whole-word `target` replaced by `names[k]` ([`rewritten_ids`], cut or
/// padded with `pad`), at index `i·K + k` of the result, with its row pairs ([`align_rows`],
/// runs of at least `min_match`, no extension after a name: the rows inside a mention are not
/// trained). Also returns the counted positions paired in all K views.
///
/// # Errors
/// The tokenizer's; [`TrainError::InvalidConfig`] when `names` is empty.
pub fn counterfactual_views<Tok: TextEncoder + TextDecoder + ?Sized>(
    data: &TokenDataset,
    tok: &Tok,
    target: &str,
    names: &[String],
    min_match: usize,
    pad: u32,
) -> Result<(TeacherDataset, ViewStats)> {
    if names.is_empty() {
        return Err(TrainError::config("names", "at least one replacement name", "none"));
    }
    let n = data.seq_len();
    let swaps: Vec<AnchorTerms> = names
        .iter()
        .map(|name| AnchorTerms::new([(target.trim().to_string(), name.clone())]))
        .collect::<Result<_>>()?;
    let mut stats = ViewStats::default();
    let (mut blocks, mut pairs) = (Vec::new(), Vec::new());
    for block in &data.blocks {
        let counted: Vec<bool> =
            block.labels.iter().map(|&l| l != crate::data::IGNORE_INDEX).collect();
        stats.counted += counted.iter().filter(|&&c| c).count();
        let mut in_all = counted.clone();
        let mut rewritten = false;
        for swap in &swaps {
            let view = view_ids(block, tok, pad, |t| swap.translate(t), &mut stats)?;
            rewritten |= view != block.input_ids;
            let p: Vec<(usize, usize)> = align_rows(&block.input_ids, &view, min_match, false)
                .into_iter()
                .filter(|&(i, _)| counted[i])
                .collect();
            let mut paired = vec![false; n];
            p.iter().for_each(|&(i, _)| paired[i] = true);
            in_all.iter_mut().zip(&paired).for_each(|(a, &b)| *a &= b);
            blocks.push(view_block(view));
            pairs.push(p);
        }
        stats.rewritten_blocks += usize::from(rewritten);
        stats.paired += in_all.iter().filter(|&&c| c).count();
    }
    let blocks = TokenDataset::new("counterfactual views", blocks)?;
    Ok((TeacherDataset { blocks, pairs }, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whitespace-separated words of a fixed vocabulary; BOS 1, EOS 2.
    struct Words(Vec<&'static str>);

    impl TextEncoder for Words {
        fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
            text.split_whitespace()
                .map(|w| {
                    let id = self.0.iter().position(|v| *v == w);
                    id.map(|i| i as u32).ok_or_else(|| TrainError::config("word", "known", w))
                })
                .collect()
        }
        fn bos_id(&self) -> Option<u32> {
            Some(1)
        }
        fn eos_id(&self) -> Option<u32> {
            Some(2)
        }
    }

    impl TextDecoder for Words {
        fn decode_text(&self, ids: &[u32]) -> Result<String> {
            Ok(ids.iter().map(|&i| self.0[i as usize]).collect::<Vec<_>>().join(" "))
        }
    }

    fn words() -> Words {
        Words(vec![
            "<pad>", "<s>", "</s>", "Harry", "went", "to", "Hogwarts", "and", "then", "smiled",
            ".", "Jon", "the", "school", "a", "Tom",
        ])
    }

    fn terms() -> AnchorTerms {
        let t = [("Harry", "Jon"), ("Hogwarts", "the school")];
        AnchorTerms::new(t.map(|(a, b)| (a.to_string(), b.to_string()))).unwrap()
    }

    fn triples(m: &[MatchBlock]) -> Vec<(usize, usize, usize)> {
        m.iter().map(|m| (m.a, m.b, m.size)).collect()
    }

    #[test]
    fn matching_blocks_match_difflib() {
        // Python 3: difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks(),
        // the final sentinel left out.
        type Case<'a> = (&'a [u32], &'a [u32], &'a [(usize, usize, usize)]);
        let cases: [Case; 5] = [
            (&[1, 2, 9, 3, 4], &[1, 2, 7, 8, 3, 4], &[(0, 0, 2), (3, 4, 2)]),
            (&[5, 1, 2, 3, 1, 2, 3, 4], &[1, 2, 3, 4, 5, 1, 2], &[(4, 0, 4)]),
            (&[1, 1, 1, 2, 2], &[2, 1, 1, 2, 1], &[(1, 1, 3)]),
            (&[7, 8, 9], &[1, 2, 3], &[]),
            (&[3, 4, 5, 6, 3, 4, 5, 7], &[3, 4, 5, 7, 9, 3, 4, 5, 6], &[(0, 5, 4)]),
        ];
        for (a, b, want) in cases {
            assert_eq!(triples(&matching_blocks(a, b)), want, "{a:?} vs {b:?}");
        }
    }

    /// The definition, by brute force: the longest run (earliest in `a`, then `b`), recursively.
    fn reference(
        a: &[u32],
        b: &[u32],
        alo: usize,
        ahi: usize,
        blo: usize,
        bhi: usize,
    ) -> Vec<(usize, usize, usize)> {
        let mut best = (alo, blo, 0);
        for i in alo..ahi {
            for j in blo..bhi {
                let k = (0..)
                    .take_while(|&k| i + k < ahi && j + k < bhi && a[i + k] == b[j + k])
                    .count();
                if k > best.2 {
                    best = (i, j, k);
                }
            }
        }
        let (i, j, k) = best;
        if k == 0 {
            return Vec::new();
        }
        let mut out = reference(a, b, alo, i, blo, j);
        out.push(best);
        out.extend(reference(a, b, i + k, ahi, j + k, bhi));
        out
    }

    proptest! {
        #[test]
        fn matching_blocks_follow_the_definition(
            a in proptest::collection::vec(0u32..4, 0..24),
            b in proptest::collection::vec(0u32..4, 0..24),
        ) {
            let mut want = reference(&a, &b, 0, a.len(), 0, b.len());
            // Adjacent runs merged, as difflib does.
            let mut merged: Vec<(usize, usize, usize)> = Vec::new();
            for m in want.drain(..) {
                match merged.last_mut() {
                    Some(p) if p.0 + p.2 == m.0 && p.1 + p.2 == m.1 => p.2 += m.2,
                    _ => merged.push(m),
                }
            }
            let got = matching_blocks(&a, &b);
            prop_assert_eq!(triples(&got), merged);
            for m in &got {
                prop_assert_eq!(&a[m.a..m.a + m.size], &b[m.b..m.b + m.size]);
            }
        }
    }

    #[test]
    fn translation_takes_whole_words_longest_first_once() {
        let t = AnchorTerms::new(
            [("Harry", "Jon"), ("Harry Potter", "Jon Smith"), ("Jon", "Harry")]
                .map(|(a, b)| (a.to_string(), b.to_string())),
        )
        .unwrap();
        assert_eq!(
            t.translate("Harry Potter met Harry, Harryson and Jon."),
            "Jon Smith met Jon, Harryson and Harry."
        );
        assert_eq!(t.translate("Ünharry Harry_ xHarry Harry"), "Ünharry Harry_ xHarry Jon");
        assert!(AnchorTerms::new(Vec::new()).is_err());
        assert!(AnchorTerms::new([(" ".to_string(), "x".to_string())]).is_err());
        let twice = [("a", "b"), ("a", "c")].map(|(a, b)| (a.to_string(), b.to_string()));
        assert!(AnchorTerms::new(twice).is_err());
    }

    #[test]
    fn views_keep_special_tokens_and_pair_rows_by_hand() {
        let tok = words();
        let ids = tok.encode_text("<s> Harry </s> Harry went").unwrap();
        let view = rewritten_ids(&ids, &tok, &[1, 2], |t| terms().translate(t)).unwrap();
        assert_eq!(tok.decode_text(&view).unwrap(), "<s> Jon </s> Jon went");

        // <s> Harry went to Hogwarts and then Harry smiled .  →
        // <s> Jon went to the school and then Jon smiled (cut to 10).
        let input_ids =
            tok.encode_text("<s> Harry went to Hogwarts and then Harry smiled .").unwrap();
        let mut labels: Vec<i64> = input_ids[1..].iter().map(|&t| i64::from(t)).collect();
        labels.push(2);
        let data = TokenDataset::new("t", vec![TokenBlock { input_ids, labels }]).unwrap();
        let (td, stats) =
            anchored_views(&data, &tok, &terms(), ViewAlignment::default(), 0).unwrap();
        let view = &td.blocks.blocks[0].input_ids;
        assert_eq!(
            tok.decode_text(view).unwrap(),
            "<s> Jon went to the school and then Jon smiled"
        );
        // Runs (0,0,1) (2,2,2) (5,6,2) (8,9,1): the runs of 2 pair rows 2, 3 and 5, 6, the rows
        // after each term's last token (1 ↔ 1, 4 ↔ 5); row 6 predicts "Harry" again: left out.
        assert_eq!(td.pairs[0], [(1, 1), (2, 2), (3, 3), (4, 5), (5, 6)]);
        assert_eq!(stats, ViewStats { rewritten_blocks: 1, counted: 10, paired: 5, truncated: 1 });
        let keep = ViewAlignment { skip_repeated_terms: false, ..ViewAlignment::default() };
        let (td, _) = anchored_views(&data, &tok, &terms(), keep, 0).unwrap();
        assert_eq!(td.pairs[0], [(1, 1), (2, 2), (3, 3), (4, 5), (5, 6), (6, 7)]);
        let plain = ViewAlignment { extend_after_gap: false, ..keep };
        let (td, _) = anchored_views(&data, &tok, &terms(), plain, 0).unwrap();
        assert_eq!(td.pairs[0], [(2, 2), (3, 3), (5, 6), (6, 7)]);
    }

    #[test]
    fn untouched_blocks_are_their_own_views() {
        let tok = words();
        let input_ids = tok.encode_text("<s> Jon went to the school and then smiled .").unwrap();
        let labels = vec![-100, -100, 5, 12, 13, 7, 8, 9, 10, 2];
        let block = TokenBlock { input_ids, labels };
        let data = TokenDataset::new("t", vec![block.clone()]).unwrap();
        let (td, stats) =
            anchored_views(&data, &tok, &terms(), ViewAlignment::default(), 0).unwrap();
        assert_eq!(td.blocks.blocks[0], block);
        assert_eq!(td.pairs[0], (2..10).map(|i| (i, i)).collect::<Vec<_>>());
        assert_eq!(stats, ViewStats { rewritten_blocks: 0, counted: 8, paired: 8, truncated: 0 });
    }

    #[test]
    fn counterfactual_views_by_hand() {
        let tok = words();
        let names = vec!["Jon".to_string(), "Tom".to_string()];
        let t = NameTokens::of(&tok, "Harry", &names).unwrap();
        // A word tokenizer writes a name alike after a space and at a line start.
        assert_eq!(t.target_forms, [vec![3]]);
        assert_eq!(t.original, OriginalFirstToken { w_prefix: 3, wo_prefix: 3 });
        assert_eq!(
            t.replacements,
            [NameFirstTokens::new(vec![11], vec![11]), NameFirstTokens::new(vec![15], vec![15])]
        );

        let input_ids =
            tok.encode_text("<s> Harry went to Hogwarts and then Harry smiled .").unwrap();
        assert_eq!(t.mentions(&input_ids), [(1, 2), (7, 8)]);
        let mut labels: Vec<i64> = input_ids[1..].iter().map(|&t| i64::from(t)).collect();
        labels.push(2);
        let data = TokenDataset::new("t", vec![TokenBlock { input_ids, labels }]).unwrap();
        let (td, stats) = counterfactual_views(&data, &tok, "Harry", &names, 2, 0).unwrap();
        // View k of block 0 at index k; runs (0,0,1) (2,2,5) (8,8,2): rows 2–6, 8, 9 paired.
        assert_eq!(td.len(), 2);
        for (k, name) in ["Jon", "Tom"].iter().enumerate() {
            let text = tok.decode_text(&td.blocks.blocks[k].input_ids).unwrap();
            assert_eq!(text, format!("<s> {name} went to Hogwarts and then {name} smiled ."));
            assert_eq!(td.pairs[k], [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (8, 8), (9, 9)]);
        }
        assert_eq!(stats, ViewStats { rewritten_blocks: 1, counted: 10, paired: 7, truncated: 0 });
        assert!(counterfactual_views(&data, &tok, "Harry", &[], 2, 0).is_err());
        assert!(NameTokens::of(&tok, " ", &names).is_err());
    }
}
