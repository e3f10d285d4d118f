//! GGUF metadata values: the 13 value types, scalars, and compact arrays.

use std::fmt;

/// A GGUF metadata value type (`enum gguf_type`), with its numeric id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `GGUF_TYPE_UINT8` = 0.
    U8,
    /// `GGUF_TYPE_INT8` = 1.
    I8,
    /// `GGUF_TYPE_UINT16` = 2.
    U16,
    /// `GGUF_TYPE_INT16` = 3.
    I16,
    /// `GGUF_TYPE_UINT32` = 4.
    U32,
    /// `GGUF_TYPE_INT32` = 5.
    I32,
    /// `GGUF_TYPE_FLOAT32` = 6.
    F32,
    /// `GGUF_TYPE_BOOL` = 7 (one byte, 0 or 1).
    Bool,
    /// `GGUF_TYPE_STRING` = 8 (u64 length, UTF-8 bytes, no NUL).
    String,
    /// `GGUF_TYPE_ARRAY` = 9 (u32 element type, u64 count, elements).
    Array,
    /// `GGUF_TYPE_UINT64` = 10.
    U64,
    /// `GGUF_TYPE_INT64` = 11.
    I64,
    /// `GGUF_TYPE_FLOAT64` = 12.
    F64,
}

impl ValueType {
    /// All 13 types, in id order.
    pub const ALL: [ValueType; 13] = [
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::F32,
        ValueType::Bool,
        ValueType::String,
        ValueType::Array,
        ValueType::U64,
        ValueType::I64,
        ValueType::F64,
    ];

    /// The type's id on disk.
    #[must_use]
    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// The type with id `id`, if it is one of GGUF's 13.
    #[must_use]
    pub fn from_id(id: u32) -> Option<ValueType> {
        ValueType::ALL.get(usize::try_from(id).ok()?).copied()
    }

    /// Bytes one value occupies on disk, for fixed-size types; `None` for
    /// strings and arrays.
    #[must_use]
    pub fn fixed_size(self) -> Option<u64> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// The fewest bytes one value of this type can occupy on disk (a string's
    /// length prefix; an array's element type and count).
    #[must_use]
    pub fn min_size(self) -> u64 {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            other => other.fixed_size().unwrap_or(1),
        }
    }

    /// The spec's name (`UINT32`, `FLOAT32`, `STRING` ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value. Floats compare with `==` (so a NaN is unequal to
/// itself); the writer stores their exact bits.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// UINT8.
    U8(u8),
    /// INT8.
    I8(i8),
    /// UINT16.
    U16(u16),
    /// INT16.
    I16(i16),
    /// UINT32.
    U32(u32),
    /// INT32.
    I32(i32),
    /// FLOAT32.
    F32(f32),
    /// BOOL.
    Bool(bool),
    /// STRING.
    String(String),
    /// ARRAY of any non-array type.
    Array(Array),
    /// UINT64.
    U64(u64),
    /// INT64.
    I64(i64),
    /// FLOAT64.
    F64(f64),
}

impl Value {
    /// The value's type.
    #[must_use]
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// `UINT32`, `STRING`, `array of FLOAT32` ...: the words error messages use.
    #[must_use]
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {}", a.element_type()),
            other => other.value_type().name().to_owned(),
        }
    }
}

/// A string array stored as one buffer plus end offsets, so a 150,000-token
/// vocabulary is two allocations, not 150,000.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringArray {
    text: String,
    ends: Vec<usize>,
}

impl StringArray {
    /// An empty array.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty array with room for `n` strings of `bytes` bytes in all.
    #[must_use]
    pub fn with_capacity(n: usize, bytes: usize) -> Self {
        StringArray { text: String::with_capacity(bytes), ends: Vec::with_capacity(n) }
    }

    /// Appends a string.
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }

    /// Number of strings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no strings.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`-th string.
    #[must_use]
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }

    /// The strings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i).unwrap_or_default())
    }

    /// Total bytes of all strings.
    #[must_use]
    pub fn text_len(&self) -> usize {
        self.text.len()
    }
}

impl<S: AsRef<str>> FromIterator<S> for StringArray {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut a = StringArray::new();
        for s in iter {
            a.push(s.as_ref());
        }
        a
    }
}

/// A metadata array: one typed vector per element type. Arrays of arrays are
/// not representable (ggml's writer refuses them; this reader rejects them).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// UINT8 elements.
    U8(Vec<u8>),
    /// INT8 elements.
    I8(Vec<i8>),
    /// UINT16 elements.
    U16(Vec<u16>),
    /// INT16 elements.
    I16(Vec<i16>),
    /// UINT32 elements.
    U32(Vec<u32>),
    /// INT32 elements.
    I32(Vec<i32>),
    /// FLOAT32 elements.
    F32(Vec<f32>),
    /// BOOL elements.
    Bool(Vec<bool>),
    /// STRING elements.
    String(StringArray),
    /// UINT64 elements.
    U64(Vec<u64>),
    /// INT64 elements.
    I64(Vec<i64>),
    /// FLOAT64 elements.
    F64(Vec<f64>),
}

impl Array {
    /// The element type.
    #[must_use]
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    #[must_use]
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Self {
                Value::$v(x)
            }
        }
        impl From<Vec<$t>> for Array {
            fn from(x: Vec<$t>) -> Self {
                Array::$v(x)
            }
        }
        impl From<Vec<$t>> for Value {
            fn from(x: Vec<$t>) -> Self {
                Value::Array(Array::$v(x))
            }
        }
    )*};
}

value_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, f32 => F32, bool => Bool, u64 => U64, i64 => I64, f64 => F64);

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<StringArray> for Value {
    fn from(a: StringArray) -> Self {
        Value::Array(Array::String(a))
    }
}

impl From<Vec<String>> for Value {
    fn from(v: Vec<String>) -> Self {
        Value::Array(Array::String(v.iter().collect()))
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Self {
        Value::Array(Array::String(v.iter().collect()))
    }
}

impl From<Array> for Value {
    fn from(a: Array) -> Self {
        Value::Array(a)
    }
}
