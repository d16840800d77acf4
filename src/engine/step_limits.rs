//! The per-step limits (`--max-num-seqs`, `--max-num-batched-tokens`) an operator may leave to the
//! device, as vLLM does: a GPU step is efficient at thousands of tokens and hundreds of sequences,
//! a CPU step is compute-bound already at a few hundred tokens and only grows its latency beyond.

use super::EngineConfig;
use candle_core::Device;

/// The flags as given; `None` follows the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepLimitFlags {
    pub max_num_seqs: Option<usize>,
    pub max_num_batched_tokens: Option<usize>,
}

/// (sequences, tokens) per step when the flags leave them open.
///
/// CPU: 256 tokens. 16 LLMBar judgments at once on the 0.5B Q4_K_M GGUF, 2 threads, took 16.8–17.1 s
/// cold / 12.6–14.9 s warm at 256 against 18.0–19.6 s / 15.1–17.5 s at 512 (128: 19.3 / 14.8; 1,024
/// and 2,048 no better than 512); a smaller step also gives decoders a token more often. GPU: vLLM's defaults for its API server on cards
/// under 70 GiB, 256 sequences and 2,048 tokens; vLLM raises them to 1,024 / 8,192 on H100 / H200,
/// but this attention's split-K scratch grows with tokens × context (1.8 GiB for the 7B at 32k and
/// 2,048 tokens, budgeted in `cache_plan.rs`), so larger steps wait for a decode kernel that loops
/// over partitions instead of storing them.
pub fn device_step_limits(device: &Device) -> (usize, usize) {
    if device.is_cpu() {
        (64, 256)
    } else {
        (256, 2048)
    }
}

impl StepLimitFlags {
    /// Writes the limits into `config`: each flag as given, the rest from the device.
    pub fn apply(self, device: &Device, config: &mut EngineConfig) {
        let (seqs, tokens) = device_step_limits(device);
        config.max_num_seqs = self.max_num_seqs.unwrap_or(seqs);
        config.max_num_batched_tokens = self.max_num_batched_tokens.unwrap_or(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_flags_follow_the_device_and_set_ones_win() {
        let mut config = EngineConfig::default();
        StepLimitFlags::default().apply(&Device::Cpu, &mut config);
        assert_eq!(
            (config.max_num_seqs, config.max_num_batched_tokens),
            (64, 256)
        );
        let flags = StepLimitFlags {
            max_num_seqs: Some(8),
            max_num_batched_tokens: None,
        };
        flags.apply(&Device::Cpu, &mut config);
        assert_eq!(
            (config.max_num_seqs, config.max_num_batched_tokens),
            (8, 256)
        );
    }
}
