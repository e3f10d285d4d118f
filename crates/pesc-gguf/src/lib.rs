//! GGUF v3: a hardened reader and a streaming writer (in progress).
