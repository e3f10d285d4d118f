//! Tensor names of the dense layers and of the two MoE layouts.

/// How PESC expert modules are named in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertNaming {
    /// `experts.expert_{j}.` (Camelidae, Qwen2idae; what this tool writes).
    Camelidae,
    /// `experts.{j}.` (sparsetral-style `nn.ModuleList`).
    Indexed,
}

impl ExpertNaming {
    /// The name of layer `i`, expert `j`'s adapter projection (`down` or `up`).
    #[must_use]
    pub fn adapter(self, layer: u64, expert: u64, which: &str) -> String {
        match self {
            ExpertNaming::Camelidae => {
                format!("model.layers.{layer}.mlp.moe_adapter.experts.expert_{expert}.adapter_{which}.weight")
            }
            ExpertNaming::Indexed => {
                format!("model.layers.{layer}.mlp.moe_adapter.experts.{expert}.adapter_{which}.weight")
            }
        }
    }
}

/// The PESC router of layer `i`.
#[must_use]
pub fn pesc_router(layer: u64) -> String {
    format!("model.layers.{layer}.mlp.moe_adapter.router.weight")
}

/// The Mixtral router of layer `i`.
#[must_use]
pub fn mixtral_gate(layer: u64) -> String {
    format!("model.layers.{layer}.block_sparse_moe.gate.weight")
}

/// Mixtral expert `j`'s projection `w` (`w1` gate, `w2` down, `w3` up) in layer `i`.
#[must_use]
pub fn mixtral_expert(layer: u64, expert: u64, w: &str) -> String {
    format!("model.layers.{layer}.block_sparse_moe.experts.{expert}.{w}.weight")
}

/// The dense FFN projection `proj` (`gate_proj`, `up_proj`, `down_proj`) of layer `i`.
#[must_use]
pub fn dense_mlp(layer: u64, proj: &str) -> String {
    format!("model.layers.{layer}.mlp.{proj}.weight")
}
