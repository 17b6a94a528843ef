//! Exact-match accuracy of a final numeric answer, as reported for arithmetic word problems
//! (GSM8K-style): the number after the last "The answer is", else the last number of the text.
//!
//! ```text
//! final_number("So 5 + 3 = 8. The answer is 8.")  = "8"
//! exact_match(prediction, reference)             = final_number(p) == final_number(r) (both present)
//! ```

/// The marker that introduces the final answer.
pub const ANSWER_MARKER: &str = "The answer is";

/// Numbers of `text` in order, normalised: digits with an optional leading minus (when the
/// minus is not preceded by a letter or digit, so `5-3` gives `5` and `3`), leading zeros
/// dropped, thousands separators (`1,200`) joined.
fn numbers(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let negative =
                i > 0 && b[i - 1] == b'-' && (i < 2 || !(b[i - 2].is_ascii_alphanumeric()));
            let mut digits = String::new();
            while i < b.len() {
                if b[i].is_ascii_digit() {
                    digits.push(b[i] as char);
                    i += 1;
                } else if b[i] == b','
                    && b.len() >= i + 4
                    && b[i + 1..i + 4].iter().all(u8::is_ascii_digit)
                    && b.get(i + 4).is_none_or(|c| !c.is_ascii_digit())
                {
                    i += 1; // a thousands separator
                } else {
                    break;
                }
            }
            let trimmed = digits.trim_start_matches('0');
            let value = if trimmed.is_empty() { "0".to_string() } else { trimmed.to_string() };
            out.push(if negative && value != "0" { format!("-{value}") } else { value });
        } else {
            i += 1;
        }
    }
    out
}

/// The final number of an answer: the first number after the last [`ANSWER_MARKER`], else the
/// last number in the text; `None` when there is no number.
///
/// # Example
/// ```
/// use kd_train::exact_match::final_number;
/// assert_eq!(final_number("Tom had 5, so 5 + 3 = 8. The answer is 08.").as_deref(), Some("8"));
/// assert_eq!(final_number("I think it is 12 or 13").as_deref(), Some("13"));
/// assert_eq!(final_number("The answer is -4.").as_deref(), Some("-4"));
/// assert_eq!(final_number("no idea"), None);
/// ```
pub fn final_number(text: &str) -> Option<String> {
    if let Some(pos) = text.rfind(ANSWER_MARKER)
        && let Some(n) = numbers(&text[pos + ANSWER_MARKER.len()..]).into_iter().next()
    {
        return Some(n);
    }
    numbers(text).pop()
}

/// Whether `prediction` and `reference` have the same [`final_number`] (false when either has
/// none).
///
/// # Example
/// ```
/// use kd_train::exact_match::exact_match;
/// assert!(exact_match("5 + 3 = 8. The answer is 8.", "The answer is 8."));
/// assert!(!exact_match("The answer is 9.", "The answer is 8."));
/// assert!(!exact_match("", "The answer is 8."));
/// ```
pub fn exact_match(prediction: &str, reference: &str) -> bool {
    match (final_number(prediction), final_number(reference)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_normalised() {
        assert_eq!(numbers("a 007 b 1,200 c -3 d 5-2"), ["7", "1200", "-3", "5", "2"]);
        assert_eq!(numbers("x-1 and 0 and -0"), ["1", "0", "0"]);
        assert_eq!(numbers("1,2 and 12,3456"), ["1", "2", "12", "3456"]);
    }

    #[test]
    fn the_marker_wins_over_later_numbers() {
        let t = "She has 4 + 6 = 10 pens. The answer is 10. (Check: 10 - 4 = 6.)";
        assert_eq!(final_number(t).as_deref(), Some("10"));
        // The last marker counts.
        let t = "The answer is 3. No wait. The answer is 5.";
        assert_eq!(final_number(t).as_deref(), Some("5"));
        // A marker with no number after it falls back to the last number.
        assert_eq!(final_number("7 + 1 = 8. The answer is").as_deref(), Some("8"));
    }

    #[test]
    fn exact_match_needs_both_numbers() {
        assert!(exact_match("The answer is 42", "... The answer is 42."));
        assert!(!exact_match("The answer is", "The answer is 42."));
        assert!(!exact_match("The answer is 4", "no number"));
    }
}
