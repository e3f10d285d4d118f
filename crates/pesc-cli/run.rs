//! `pesc-convert run MODEL|FILE.gguf --prompt TEXT`.

use crate::cli::RunArgs;
use crate::output;
use anyhow::{bail, Result};
use pesc_hf::ChatMessage;
use pesc_runner::{Runner, Sampler, Weights};
use std::io::Write;

pub fn run(a: &RunArgs) -> Result<()> {
    if a.prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
        bail!("the prompt is empty");
    }
    if !(a.temperature >= 0.0 && a.temperature.is_finite() && a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--temperature must be a finite number >= 0 and --top-p in (0, 1]");
    }
    let model = Weights::open(&a.model)?;
    let text = match &a.token_ids {
        Some(_) if !model.has_tokenizer() => None,
        _ => Some(model.text()?),
    };
    let ids = match (&a.token_ids, &text) {
        (Some(ids), _) => ids.0.clone(),
        (None, Some(text)) => match chat_prompt(a, text)? {
            // A rendered template holds its special tokens; plain text gets the tokenizer's (BOS for Llama).
            Prompt::Chat(p) => text.encode(&p)?,
            Prompt::Plain(p) => text.encode_text(&p)?,
        },
        (None, None) => bail!("--prompt or --token-ids is required"),
    };
    let runner = Runner::fit(&model, a.dtype.dtype(), &a.device.device()?, a.max_memory)?;
    if !runner.is_resident() {
        output::note(&format!(
            "the model ({} in memory) does not fit: its layers are read for every token, which is slow",
            output::human_bytes(runner.resident_bytes())
        ));
    }
    let mut sampler = Sampler::new(a.temperature, a.top_p, a.seed);
    let mut generated = Vec::new();
    let mut shown = 0usize;
    let mut stdout = std::io::stdout().lock();
    let started = std::time::Instant::now();
    let eos = text.as_ref().map_or(&[][..], pesc_hf::TextModel::eos_ids);
    let out = pesc_runner::generate(&runner, &ids, a.max_new_tokens, &mut sampler, eos, &mut |t| {
        generated.push(t);
        let Some(text) = &text else { return Ok(()) };
        // Print only the text that became final: decoding a prefix can end in
        // half a UTF-8 character.
        let so_far = text.decode(&generated)?;
        if let Some(new) = so_far.get(shown..).filter(|n| !n.is_empty() && !so_far.ends_with('\u{fffd}')) {
            let _ = stdout.write_all(new.as_bytes());
            let _ = stdout.flush();
            shown = so_far.len();
        }
        Ok(())
    })?;
    match &text {
        Some(text) => {
            let all = text.decode(&generated)?;
            let _ = writeln!(stdout, "{}", all.get(shown..).unwrap_or(""));
        }
        None => {
            let list: Vec<String> = generated.iter().map(u32::to_string).collect();
            let _ = writeln!(stdout, "{}", list.join(","));
        }
    }
    let _ = stdout.flush();
    drop(stdout);
    let secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    output::note(&format!(
        "{} prompt tokens, {} generated in {secs:.2}s ({:.1} tokens/s)",
        ids.len(),
        out.len(),
        out.len() as f64 / secs.max(1e-9)
    ));
    Ok(())
}

/// A prompt rendered by the chat template, or plain text.
enum Prompt {
    Chat(String),
    Plain(String),
}

/// The prompt as the model reads it: through its chat template unless `--raw`.
fn chat_prompt(a: &RunArgs, text: &pesc_hf::TextModel) -> Result<Prompt> {
    let prompt = a.prompt.clone().unwrap_or_default();
    if a.raw || !text.has_chat_template() {
        if !a.raw {
            output::warn("the model has no chat template; using the prompt as plain text");
        }
        return Ok(Prompt::Plain(prompt));
    }
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage { role: "system".into(), content: s.clone() });
    }
    messages.push(ChatMessage { role: "user".into(), content: prompt });
    Ok(Prompt::Chat(text.apply_chat_template(&messages, true)?))
}
