//! Ordered GGUF metadata with typed accessors.

use crate::error::MetadataError;
use crate::value::{Array, StringArray, Value, ValueType};
use std::collections::HashMap;

/// Longest key, in bytes (the spec's limit).
pub const MAX_KEY_LEN: u64 = 65_535;
/// The data alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// Largest `general.alignment` accepted. ggml accepts any power of two; a huge
/// one only adds padding and was the 32-bit overflow class (llama.cpp #24997).
pub const MAX_ALIGNMENT: u32 = 1 << 20;
/// The key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Metadata key-value pairs in file order, with a key index. Keys are unique
/// and non-empty: [`Metadata::push`] enforces it, for the reader and the
/// writer alike.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

macro_rules! scalar_getters {
    ($($get:ident, $opt:ident, $t:ty, $v:ident, $vt:ident;)*) => {$(
        #[doc = concat!("The `", stringify!($vt), "` value of `key`; an error if it is absent or of another type.")]
        pub fn $get(&self, key: &str) -> Result<$t, MetadataError> {
            self.$opt(key)?.ok_or_else(|| MetadataError::Missing { key: key.to_owned() })
        }

        #[doc = concat!("The `", stringify!($vt), "` value of `key` if present; an error if it is of another type.")]
        pub fn $opt(&self, key: &str) -> Result<Option<$t>, MetadataError> {
            match self.get(key) {
                None => Ok(None),
                Some(Value::$v(x)) => Ok(Some(*x)),
                Some(other) => Err(type_error(key, ValueType::$vt.name().to_owned(), other)),
            }
        }
    )*};
}

macro_rules! array_getters {
    ($($get:ident, $t:ty, $v:ident;)*) => {$(
        #[doc = concat!("The elements of the `array of ", stringify!($v), "` at `key`; an error if it is absent, not an array, or an array of another element type.")]
        pub fn $get(&self, key: &str) -> Result<&[$t], MetadataError> {
            match self.get_array(key)? {
                Array::$v(v) => Ok(v),
                other => Err(MetadataError::Type {
                    key: key.to_owned(),
                    expected: format!("array of {}", ValueType::$v.name()),
                    found: format!("array of {}", other.element_type()),
                }),
            }
        }
    )*};
}

fn type_error(key: &str, expected: String, found: &Value) -> MetadataError {
    MetadataError::Type { key: key.to_owned(), expected, found: found.type_name() }
}

impl Metadata {
    /// No entries.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key = value`. Refuses an empty key, a key above
    /// [`MAX_KEY_LEN`] bytes, and a key already present.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Result<(), MetadataError> {
        let key = key.into();
        let index = self.entries.len();
        if key.is_empty() {
            return Err(MetadataError::EmptyKey { index });
        }
        if key.len() as u64 > MAX_KEY_LEN {
            return Err(MetadataError::KeyTooLong { index, len: key.len() as u64, cap: MAX_KEY_LEN });
        }
        if self.index.contains_key(&key) {
            return Err(MetadataError::Duplicate { key });
        }
        self.index.insert(key.clone(), index);
        self.entries.push((key, value.into()));
        Ok(())
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is present.
    #[must_use]
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// The value of `key`, of any type.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The entries, consumed, in order.
    #[must_use]
    pub fn into_entries(self) -> Vec<(String, Value)> {
        self.entries
    }

    scalar_getters! {
        get_u8, opt_u8, u8, U8, U8;
        get_i8, opt_i8, i8, I8, I8;
        get_u16, opt_u16, u16, U16, U16;
        get_i16, opt_i16, i16, I16, I16;
        get_u32, opt_u32, u32, U32, U32;
        get_i32, opt_i32, i32, I32, I32;
        get_f32, opt_f32, f32, F32, F32;
        get_bool, opt_bool, bool, Bool, Bool;
        get_u64, opt_u64, u64, U64, U64;
        get_i64, opt_i64, i64, I64, I64;
        get_f64, opt_f64, f64, F64, F64;
    }

    /// The `STRING` value of `key`; an error if it is absent or of another type.
    pub fn get_str(&self, key: &str) -> Result<&str, MetadataError> {
        self.opt_str(key)?.ok_or_else(|| MetadataError::Missing { key: key.to_owned() })
    }

    /// The `STRING` value of `key` if present; an error if it is of another type.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, MetadataError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(type_error(key, "STRING".into(), other)),
        }
    }

    /// The array at `key`, of any element type.
    pub fn get_array(&self, key: &str) -> Result<&Array, MetadataError> {
        match self.get(key) {
            None => Err(MetadataError::Missing { key: key.to_owned() }),
            Some(Value::Array(a)) => Ok(a),
            Some(other) => Err(type_error(key, "an array".into(), other)),
        }
    }

    /// The `array of STRING` at `key` (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<&StringArray, MetadataError> {
        match self.get_array(key)? {
            Array::String(a) => Ok(a),
            other => Err(MetadataError::Type {
                key: key.to_owned(),
                expected: "array of STRING".into(),
                found: format!("array of {}", other.element_type()),
            }),
        }
    }

    array_getters! {
        get_u8_array, u8, U8;
        get_i8_array, i8, I8;
        get_u16_array, u16, U16;
        get_i16_array, i16, I16;
        get_u32_array, u32, U32;
        get_i32_array, i32, I32;
        get_f32_array, f32, F32;
        get_bool_array, bool, Bool;
        get_u64_array, u64, U64;
        get_i64_array, i64, I64;
        get_f64_array, f64, F64;
    }

    /// The data alignment: `general.alignment` if present, else 32. It must
    /// be a `UINT32`, a power of two (so non-zero) and at most
    /// [`MAX_ALIGNMENT`], as ggml requires (plus the upper bound).
    pub fn alignment(&self) -> Result<u32, MetadataError> {
        match self.get(ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(Value::U32(a)) => check_alignment(*a),
            Some(other) => Err(MetadataError::Alignment {
                value: format!("of type {}", other.type_name()),
                problem: "it must be a UINT32 (ggml refuses any other type)",
            }),
        }
    }
}

fn check_alignment(a: u32) -> Result<u32, MetadataError> {
    let problem = if a == 0 {
        "it must be a non-zero power of two"
    } else if !a.is_power_of_two() {
        "it must be a power of two"
    } else if a > MAX_ALIGNMENT {
        "it must be at most 1048576"
    } else {
        return Ok(a);
    };
    Err(MetadataError::Alignment { value: a.to_string(), problem })
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a str, &'a Value);
    type IntoIter = Box<dyn ExactSizeIterator<Item = (&'a str, &'a Value)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}
