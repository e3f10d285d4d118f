//! What can be wrong with a Hugging Face model folder or file beyond its framing.

use std::path::PathBuf;

/// What can be wrong with a model folder beyond its file framing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HfError {
    /// A file-level error.
    #[error(transparent)]
    Io(#[from] pesc_io::Error),
    /// A `config.json` key is missing or has a bad value.
    #[error("`{path}`: `{key}` {problem}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The architecture is not one this tool handles.
    #[error("`{path}`: model_type `{model_type}` (architectures: {architectures}) is not supported; supported are llama (TinyLlama, Llama 2/3, Yi, SmolLM2), mistral and qwen2, and their PESC and Mixtral forms")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// Its `model_type`.
        model_type: String,
        /// Its `architectures`.
        architectures: String,
    },
    /// A tensor the config implies is absent.
    #[error("`{path}`: tensor `{tensor}` {shape}, implied by config.json, is missing")]
    MissingTensor {
        /// The model folder.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its expected shape.
        shape: String,
    },
    /// A tensor's shape contradicts the config.
    #[error("`{path}`: tensor `{tensor}` has shape {actual} but config.json ({sizes}) implies {expected}")]
    Shape {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its shape.
        actual: String,
        /// The implied shape.
        expected: String,
        /// The config's sizes.
        sizes: String,
    },
    /// A tensor that the config does not account for.
    #[error("`{path}`: tensor `{tensor}` is not part of a {kind} model with this config.json")]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The model kind.
        kind: String,
    },
    /// A weight is not stored as a float type.
    #[error("`{path}`: tensor `{tensor}` has dtype {dtype}; weights must be F32, F16 or BF16")]
    DType {
        /// The weights file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: pesc_tensor::DType,
    },
    /// An NF4 weight whose pieces are missing, malformed or inconsistent.
    #[error("`{path}`: NF4 weight `{tensor}`, {field}: {problem}")]
    Nf4 {
        /// The file holding the piece (or the folder when it is missing).
        path: PathBuf,
        /// The weight.
        tensor: String,
        /// The piece or quant-state key.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// The model has no `tokenizer.json`.
    #[error("`{path}`: not found; this model has no tokenizer (pass token ids instead)")]
    NoTokenizer {
        /// The missing file.
        path: PathBuf,
    },
    /// The tokenizer could not be loaded or used (the `tokenizers` crate's message).
    #[error("`{path}`: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What the tokenizer reported.
        message: String,
    },
    /// A SentencePiece `tokenizer.model` that is malformed or not supported.
    #[error("`{path}`: {field}: {problem}")]
    SentencePiece {
        /// The model file.
        path: PathBuf,
        /// The protobuf field at fault (`pieces[7]`, `trainer_spec.model_type`).
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// The model has no chat template.
    #[error("`{path}`: the model has no chat template")]
    NoChatTemplate {
        /// The tokenizer file.
        path: PathBuf,
    },
    /// The chat template does not compile or render (minijinja's message).
    #[error("`{path}`: chat template: {message}")]
    ChatTemplate {
        /// The file holding the template.
        path: PathBuf,
        /// What minijinja reported.
        message: String,
    },
    /// A text file is not UTF-8.
    #[error("`{path}` is not UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// A JSON file does not parse.
    #[error("`{path}` is not valid JSON: {message}")]
    NotJson {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A JSON file is not an object.
    #[error("`{path}` is not a JSON object")]
    NotJsonObject {
        /// The file.
        path: PathBuf,
    },
    /// A field of `adapter_config.json` is missing or has a bad value.
    #[error("`{path}`: field `{field}` {problem}")]
    AdapterField {
        /// The adapter config.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A folder given as a PEFT adapter holds no adapter config.
    #[error("`{path}` has no `adapter_config.json` (nor `adapter_model/adapter_config.json`): not a PEFT adapter folder")]
    NotAdapterFolder {
        /// The folder.
        path: PathBuf,
    },
    /// An adapter folder without `adapter_model.safetensors`.
    #[error("`{path}` has no `adapter_model.safetensors`")]
    MissingAdapterWeights {
        /// The adapter folder.
        path: PathBuf,
    },
    /// A tensor of an adapter (or of trained tensors delivered with it) that cannot be used.
    #[error("`{path}`: tensor `{tensor}` {problem}")]
    AdapterTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// A pickled PyTorch file where safetensors is needed: never opened.
    #[error(
        "`{path}` is a pickled PyTorch file{what}, which can run arbitrary code when loaded; this tool never unpickles\n\nhint: {hint}"
    )]
    PickledFile {
        /// The file.
        path: PathBuf,
        /// What it holds, as a parenthesis (or empty).
        what: &'static str,
        /// How to convert it.
        hint: String,
    },
}
