//! The equivalence gate (`verify`): a candidate model against its reference
//! on the same inputs, with the verdict users put in CI.
//!
//! - [`compare`]: logits of two runners compared ([`Comparison`]);
//! - [`gate`]: the whole check: checksums first, vocabularies, the inputs
//!   (token ids, a prompt file or the built-in prompts), the comparison, and
//!   the verdict: a PESC candidate whose adapters are all zero, stored like
//!   its dense reference, must equal it exactly; anything else must stay
//!   within the tolerances.

mod compare;
mod gate;

pub use compare::{builtin_sequences, compare, has_zero_adapters, kl, Comparison, Worst};
pub use gate::{gate, Gate, Inputs, Verdict, VerifyError, BUILTIN_PROMPTS};
