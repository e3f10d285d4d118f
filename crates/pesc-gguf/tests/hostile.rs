//! Hostile GGUF inputs, one test per rule of the C4 matrix (G1-G12) and both
//! sides of every bound. Each file is built by hand with the helpers in
//! `common`; each must be refused quickly with a message that names the file
//! and the broken rule.

mod common;

use common::*;
use pesc_gguf::{write_gguf, GgmlType, GgufError, GgufFile, Metadata, TensorSpec, Value};
use std::io::Write;

const I64_MAX: u64 = i64::MAX as u64;

/// A small valid file: two F32 tensors `a` [8] and `b` [4] at offsets 0 and 32.
fn two_tensors(a_off: u64, b_off: u64, data_len: usize) -> Vec<u8> {
    file(
        &[kv_string("general.architecture", "llama")],
        &[tensor_info(b"a", &[8], F32, a_off), tensor_info(b"b", &[4], F32, b_off)],
        &vec![0u8; data_len],
    )
}

/// One F32 tensor `t` with dims `ne` and type `ty` at offset 0, with 64 data bytes.
fn one_tensor(ne: &[u64], ty: u32) -> Vec<u8> {
    file(&[], &[tensor_info(b"t", ne, ty, 0)], &[0u8; 64])
}

// ---------------------------------------------------------------- G1 header

#[test]
fn g1_bad_magic() {
    let mut b = header(0, 0);
    b[..4].copy_from_slice(b"GGML");
    assert_rejects(&b, "not a GGUF file: the first four bytes are \"GGML\"");
    b[..4].copy_from_slice(&[0x80, 2, b'}', 0]);
    assert_rejects(&b, "\\x80\\x02}\\x00");
}

#[test]
fn g1_too_small() {
    assert_rejects(b"", "file is 0 bytes, too small");
    assert_rejects(b"GGU", "file is 3 bytes, too small");
    assert_rejects(&header(0, 0)[..20], "file is 20 bytes, too small");
}

#[test]
fn g1_version_1_and_4_and_byte_swapped() {
    assert_rejects(&header_v(1, 0, 0), "GGUF version 1: GGUFv1 is no longer supported");
    assert_rejects(&header_v(4, 0, 0), "GGUF version 4: newer than this reader supports");
    assert_rejects(&header_v(0, 0, 0), "GGUF version 0");
    assert_rejects(&header_v(0x0300_0000, 0, 0), "byte-swapped (big-endian)");
    // Version 2 has the same layout and is read.
    let g = assert_accepts(&header_v(2, 0, 0));
    assert_eq!(g.version(), 2);
    assert_eq!(assert_accepts(&header(0, 0)).version(), 3);
}

// ---------------------------------------------------------------- G2 counts

#[test]
fn g2_counts_of_2_pow_63() {
    let mut b = header(1 << 63, 0);
    b.resize(100, 0);
    assert_rejects(&b, "tensor count is 9223372036854775808, but the 76 bytes left in the file hold at most 2 entries");
    let mut b = header(0, 1 << 63);
    b.resize(100, 0);
    assert_rejects(
        &b,
        "metadata entry count is 9223372036854775808, but the 76 bytes left in the file hold at most 5 entries of at least 13 bytes",
    );
    let mut b = header(u64::MAX, u64::MAX);
    b.resize(100, 0);
    assert_rejects(&b, "metadata entry count is 18446744073709551615");
}

#[test]
fn g2_kv_count_bound_both_sides() {
    // 130 bytes after the header: room for at most 10 entries of 13 bytes.
    let mut b = header(0, 11);
    b.resize(24 + 130, 0);
    assert_rejects(&b, "metadata entry count is 11");
    // 10 passes the count check and fails on the (zero-length) first key instead.
    let mut b = header(0, 10);
    b.resize(24 + 130, 0);
    assert_rejects(&b, "metadata entry 0 has an empty key");
}

#[test]
fn g2_tensor_count_bound_both_sides() {
    // 64 bytes after the header: room for at most 2 infos of 32 bytes.
    let mut b = header(3, 0);
    b.resize(24 + 64, 0);
    assert_rejects(&b, "tensor count is 3");
    let mut b = header(2, 0);
    b.resize(24 + 64, 0);
    assert_rejects(&b, "tensor `#0`: the name is empty");
}

#[test]
fn g2_tensor_count_rechecked_after_metadata() {
    // 3 tensor infos would fit in the bytes after the header, but not in what
    // is left after a large metadata string.
    let mut b = header(3, 1);
    b.extend_from_slice(&kv_string("general.name", &"x".repeat(80)));
    b.resize(b.len() + 40, 0);
    assert_rejects(&b, "tensor count is 3, but the 40 bytes left");
}

// ---------------------------------------------------------------- G3 strings

#[test]
fn g3_string_lengths_at_and_beyond_caps() {
    for len in [u64::MAX, u64::MAX - 1, 1 << 40, (1 << 30) + 1] {
        let b = file(&[kv_raw(b"general.name", T_STRING, &len.to_le_bytes())], &[], &[]);
        assert_rejects(&b, &format!("the value of key `general.name` has length {len}, above the limit of 1073741824"));
    }
    // Exactly at the cap: not a cap error, but far more than the file holds.
    let b = file(&[kv_raw(b"general.name", T_STRING, &(1u64 << 30).to_le_bytes())], &[], &[]);
    assert_rejects(&b, "has length 1073741824 (1073741824 bytes at least), but only");
}

#[test]
fn g3_string_longer_than_the_rest_of_the_file() {
    let mut payload = 100u64.to_le_bytes().to_vec();
    payload.extend_from_slice(b"short");
    let b = [header(0, 1), kv_raw(b"general.name", T_STRING, &payload)].concat();
    assert_rejects(&b, "the value of key `general.name` has length 100 (100 bytes at least), but only 5 bytes are left");
}

#[test]
fn g3_key_and_tensor_name_lengths() {
    let mut b = header(0, 1);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.resize(100, 0);
    assert_rejects(&b, "metadata entry 0 has a key of 18446744073709551615 bytes, above the limit of 65535");
    let mut b = header(0, 1);
    b.extend_from_slice(&65_536u64.to_le_bytes());
    b.resize(100, 0);
    assert_rejects(&b, "has a key of 65536 bytes");
    let mut b = header(0, 1);
    b.extend_from_slice(&65_535u64.to_le_bytes());
    b.resize(100, 0);
    assert_rejects(&b, "the key of metadata entry 0 has length 65535");

    let mut b = header(1, 0);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.resize(100, 0);
    assert_rejects(&b, "tensor `#0`: the name is 18446744073709551615 bytes; ggml allows at most 63");
}

#[test]
fn g3_strings_must_be_utf8() {
    let b = file(&[kv_raw(b"bad\xff", T_U32, &[0; 4])], &[], &[]);
    assert_rejects(&b, "the key of metadata entry 0 is not valid UTF-8 (first invalid byte at 3");
    let b = file(&[kv_raw(b"general.name", T_STRING, &string(b"a\xc3"))], &[], &[]);
    assert_rejects(&b, "the value of key `general.name` is not valid UTF-8");
    let b = file(&[], &[tensor_info(b"t\xfe", &[8], F32, 0)], &[0; 32]);
    assert_rejects(&b, "the name of tensor info 0 is not valid UTF-8");
}

// ---------------------------------------------------------------- G4 arrays

#[test]
fn g4_array_of_2_pow_62_elements() {
    let b = file(&[kv_array("tokenizer.ggml.scores", T_F32, 1 << 62, &[])], &[], &[]);
    assert_rejects(&b, "array `tokenizer.ggml.scores` has length 4611686018427387904, above the limit of 1073741824");
    let b = file(&[kv_array("tokenizer.ggml.tokens", T_STRING, u64::MAX, &[])], &[], &[]);
    assert_rejects(&b, "has length 18446744073709551615, above the limit");
}

#[test]
fn g4_array_longer_than_the_rest_of_the_file() {
    // At the element cap: 2^30 u32 need 4 GiB.
    let b = file(&[kv_array("k", T_U32, 1 << 30, &[0; 16])], &[], &[]);
    assert_rejects(&b, "array `k` has length 1073741824 (4294967296 bytes at least), but only");
    // String arrays: every element needs at least its 8-byte length.
    let b = [header(0, 1), kv_array("tokenizer.ggml.tokens", T_STRING, 10, &[0; 72])].concat();
    assert_rejects(&b, "array `tokenizer.ggml.tokens` has length 10 (80 bytes at least), but only 72");
    // Each element's own length is checked too.
    let mut elems = string(b"a");
    elems.extend_from_slice(&u64::MAX.to_le_bytes());
    let b = file(&[kv_array("tokenizer.ggml.tokens", T_STRING, 2, &elems)], &[], &[]);
    assert_rejects(&b, "element 1 of array `tokenizer.ggml.tokens` has length 18446744073709551615, above the limit");
}

#[test]
fn g4_nested_arrays_are_refused() {
    let inner = [T_U8.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec(), vec![7]].concat();
    let b = file(&[kv_array("k", T_ARRAY, 1, &inner)], &[], &[]);
    assert_rejects(&b, "key `k`: arrays of arrays are not supported");

    // 10,000 levels deep: refused at the first level, no recursion.
    let mut deep = Vec::new();
    for _ in 0..10_000 {
        deep.extend_from_slice(&T_ARRAY.to_le_bytes());
        deep.extend_from_slice(&1u64.to_le_bytes());
    }
    let b = file(&[kv_raw(b"deep", T_ARRAY, &deep)], &[], &[]);
    assert_rejects(&b, "key `deep`: arrays of arrays are not supported");
}

#[test]
fn g4_invalid_element_and_value_types() {
    let b = file(&[kv_array("k", 13, 1, &[0; 8])], &[], &[]);
    assert_rejects(&b, "key `k`: array element type 13 is not a GGUF value type (0 to 12)");
    let b = file(&[kv_raw(b"k", 13, &[0; 8])], &[], &[]);
    assert_rejects(&b, "key `k`: value type 13 is not a GGUF value type");
    let b = file(&[kv_raw(b"k", u32::MAX, &[0; 8])], &[], &[]);
    assert_rejects(&b, "value type 4294967295 is not a GGUF value type");
}

#[test]
fn bool_must_be_0_or_1() {
    let b = file(&[kv_raw(b"flag", T_BOOL, &[2])], &[], &[]);
    assert_rejects(&b, "key `flag`: boolean byte 2 is neither 0 nor 1");
    let b = file(&[kv_array("flags", T_BOOL, 3, &[1, 0, 255])], &[], &[]);
    assert_rejects(&b, "key `flags`: boolean byte 255");
    let g = assert_accepts(&file(&[kv_raw(b"flag", T_BOOL, &[1]), kv_array("flags", T_BOOL, 2, &[0, 1])], &[], &[]));
    assert!(g.get_bool("flag").unwrap());
    assert_eq!(g.get_bool_array("flags").unwrap(), &[false, true]);
}

// ---------------------------------------------------------------- G5 shapes

#[test]
fn g5_n_dims_5_and_0xffffffff_and_0() {
    let b = file(&[], &[tensor_info(b"t", &[8, 1, 1, 1, 1], F32, 0)], &[0; 32]);
    assert_rejects(&b, "tensor `t`: n_dims is 5; ggml allows 1 to 4");
    let b = file(&[], &[tensor_info_ndims(b"t", u32::MAX, &[8], F32, 0)], &[0; 32]);
    assert_rejects(&b, "tensor `t`: n_dims is 4294967295");
    let b = file(&[], &[tensor_info_ndims(b"t", 0, &[], F32, 0)], &[0; 32]);
    assert_rejects(&b, "tensor `t`: n_dims is 0");
    // 4 is the most allowed.
    let g = assert_accepts(&file(&[], &[tensor_info(b"t", &[8, 1, 1, 1], F32, 0)], &[0; 32]));
    assert_eq!(g.tensors()[0].ne, [8, 1, 1, 1]);
}

#[test]
fn g5_zero_dimension_is_refused() {
    // Rule: every ne[j] >= 1 (stricter than ggml, which allows empty tensors).
    assert_rejects(&one_tensor(&[32, 0], F32), "tensor `t`: ne[1] is 0 (shape [32, 0]); zero-element tensors are not allowed");
    assert_rejects(&one_tensor(&[0], Q4_K), "ne[0] is 0");
}

#[test]
fn g5_negative_dimension_is_refused() {
    assert_rejects(&one_tensor(&[8, 1 << 63], F32), "tensor `t`: ne[1] is 9223372036854775808, above 9223372036854775807");
    assert_rejects(&one_tensor(&[u64::MAX], I8), "ne[0] is 18446744073709551615");
}

#[test]
fn g5_element_count_overflow() {
    assert_rejects(
        &one_tensor(&[1 << 32, 1 << 32, 1, 1], F32),
        "shape [4294967296, 4294967296, 1, 1] has more than 9223372036854775807 elements",
    );
    assert_rejects(&one_tensor(&[I64_MAX, 2, 1, 1], F32), "shape [9223372036854775807, 2, 1, 1] has more than");
    // A count that wraps u64 to a small number is caught too: 2^32 * 2^32 * 4 == 0 mod 2^64.
    assert_rejects(&one_tensor(&[1 << 32, 1 << 32, 4], I8), "has more than");
}

// ---------------------------------------------------------------- G6 types

#[test]
fn g6_type_id_out_of_range() {
    assert_rejects(&one_tensor(&[8], 43), "tensor `t`: type id 43 is not a ggml type id");
    assert_rejects(&one_tensor(&[8], u32::MAX), "type id 4294967295 is not a ggml type id");
    assert_rejects(&one_tensor(&[8], 4), "type id 4 is a type id ggml has removed");
    assert_rejects(&one_tensor(&[256], 19), "type id 19 is ggml type IQ1_S, which pesc-convert does not support");
}

#[test]
fn g6_row_not_whole_blocks() {
    assert_rejects(&one_tensor(&[576], Q4_K), "tensor `t`: row length ne[0] = 576 is not a multiple of the Q4_K block size 256");
    assert_rejects(&one_tensor(&[48, 2], Q8_0), "ne[0] = 48 is not a multiple of the Q8_0 block size 32");
    // Only ne[0] is the row: other dimensions need not be block multiples.
    let g = assert_accepts(&file(&[], &[tensor_info(b"t", &[32, 3], Q8_0, 0)], &[0; 128]));
    assert_eq!(g.tensors()[0].nbytes, 3 * 34);
}

// ---------------------------------------------------------------- G7 byte sizes

#[test]
fn g7_quantized_byte_size_overflow() {
    // 31 * 2^58 elements fit in an i64, but 31 * 2^53 blocks of 34 bytes do not.
    assert_rejects(
        &one_tensor(&[1 << 58, 31], Q8_0),
        "Q8_0 tensor of shape [288230376151711744, 31] needs more than 9223372036854775807 bytes",
    );
    // 2^62 F64 elements are 2^65 bytes, which wraps u64.
    assert_rejects(&one_tensor(&[1 << 62], F64), "F64 tensor of shape [4611686018427387904] needs more than");
}

// ---------------------------------------------------------------- G8 alignment

#[test]
fn g8_alignment_values() {
    for (a, msg) in [
        (0u32, "`general.alignment` is 0: it must be a non-zero power of two"),
        (3, "`general.alignment` is 3: it must be a power of two"),
        (48, "`general.alignment` is 48: it must be a power of two"),
        (1 << 31, "`general.alignment` is 2147483648: it must be at most 1048576"),
    ] {
        assert_rejects(&file(&[kv_u32("general.alignment", a)], &[], &[]), msg);
    }
}

#[test]
fn g8_alignment_types() {
    assert_rejects(&file(&[kv_i32("general.alignment", 32)], &[], &[]), "`general.alignment` is of type INT32: it must be a UINT32");
    assert_rejects(&file(&[kv_string("general.alignment", "32")], &[], &[]), "`general.alignment` is of type STRING");
    assert_rejects(&file(&[kv_array("general.alignment", T_U32, 1, &32u32.to_le_bytes())], &[], &[]), "is of type array of UINT32");
}

#[test]
fn g8_alignment_64_is_honoured() {
    let b = file_aligned(
        &[kv_u32("general.alignment", 64)],
        &[tensor_info(b"a", &[2], F32, 0), tensor_info(b"b", &[2], F32, 64)],
        &[[1u8; 8].as_slice(), &[0; 56], &[2; 8]].concat(),
        64,
    );
    let g = assert_accepts(&b);
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_start() % 64, 0);
    assert_eq!(g.read(g.tensor("b").unwrap()).unwrap(), [2; 8]);
    // The same offsets are wrong under the default alignment of 32.
    let b = file(&[], &[tensor_info(b"a", &[2], F32, 0), tensor_info(b"b", &[2], F32, 64)], &[0; 72]);
    assert_rejects(&b, "tensor `b`: data offset is 64, expected 32: leaves a gap");
}

// ---------------------------------------------------------------- G9 offsets

#[test]
fn g9_offset_gap() {
    assert_rejects(&two_tensors(0, 64, 96), "tensor `b`: data offset is 64, expected 32: leaves a gap after the previous tensor");
    assert_rejects(&two_tensors(32, 64, 96), "tensor `a`: data offset is 32, expected 0: leaves a gap");
}

#[test]
fn g9_offset_overlap() {
    assert_rejects(&two_tensors(0, 0, 64), "tensor `b`: data offset is 0, expected 32: overlaps the previous tensor");
    // Packed without padding: 12 bytes are not a multiple of 32.
    let b = file(&[], &[tensor_info(b"a", &[3], F32, 0), tensor_info(b"b", &[3], F32, 12)], &[0; 64]);
    assert_rejects(&b, "tensor `b`: data offset is 12, expected 32");
}

#[test]
fn g9_offset_out_of_order() {
    // `b`'s data first, `a`'s second: ggml requires info order.
    assert_rejects(&two_tensors(32, 0, 64), "tensor `a`: data offset is 32, expected 0");
}

#[test]
fn g9_data_beyond_eof() {
    assert_rejects(&two_tensors(0, 32, 40), "file is truncated: tensor `b` occupies bytes 192..208 but the file has 200");
    assert_rejects(&two_tensors(0, 32, 0), "file is truncated: tensor `a` occupies bytes 160..192 but the file has 160");
    assert_rejects(&one_tensor(&[I64_MAX], I8), "tensor `t` occupies bytes 64..9223372036854775871");
    // Exactly long enough, without the last tensor's padding: accepted, as in ggml.
    let g = assert_accepts(&two_tensors(0, 32, 48));
    assert_eq!(g.file_len(), 160 + 48);
    assert_eq!(g.data_start(), 160);
}

#[test]
fn g9_running_size_overflow() {
    // Two tensors of i64::MAX bytes: the second's padded end passes 2^64.
    let b = file(&[], &[tensor_info(b"a", &[I64_MAX], I8, 0), tensor_info(b"b", &[I64_MAX], I8, 1 << 63)], &[]);
    assert_rejects(&b, "tensor `b`: the data section size overflows");
}

// ---------------------------------------------------------------- G10 names

#[test]
fn g10_duplicate_key() {
    let b = file(&[kv_u32("llama.block_count", 2), kv_u32("llama.block_count", 3)], &[], &[]);
    assert_rejects(&b, "key `llama.block_count` appears more than once");
    // Same key with another type: still a duplicate.
    let b = file(&[kv_u32("k", 2), kv_string("k", "x")], &[], &[]);
    assert_rejects(&b, "key `k` appears more than once");
}

#[test]
fn g10_empty_key() {
    let b = file(&[kv_u32("a", 1), kv_raw(b"", T_U32, &[0; 4])], &[], &[]);
    assert_rejects(&b, "metadata entry 1 has an empty key");
}

#[test]
fn g10_duplicate_tensor_name() {
    let b = file(&[], &[tensor_info(b"w", &[8], F32, 0), tensor_info(b"w", &[8], F32, 32)], &[0; 64]);
    assert_rejects(&b, "tensor `w`: the name appears more than once");
}

#[test]
fn g10_tensor_name_lengths() {
    let long = vec![b'x'; 64];
    let b = file(&[], &[tensor_info(&long, &[8], F32, 0)], &[0; 32]);
    assert_rejects(&b, "tensor `#0`: the name is 64 bytes; ggml allows at most 63");
    let ok = vec![b'x'; 63];
    let g = assert_accepts(&file(&[], &[tensor_info(&ok, &[8], F32, 0)], &[0; 32]));
    assert_eq!(g.tensors()[0].name.len(), 63);
    let b = file(&[], &[tensor_info(b"", &[8], F32, 0)], &[0; 32]);
    assert_rejects(&b, "tensor `#0`: the name is empty");
}

// ---------------------------------------------------------------- G11 types when consumed

#[test]
fn g11_metadata_type_confusion_is_an_error_when_consumed() {
    let b = file(
        &[
            kv_array("tokenizer.ggml.scores", T_U8, 3, &[1, 2, 3]),
            kv_string("general.architecture", "llama"),
            kv_i32("llama.block_count", 2),
        ],
        &[],
        &[],
    );
    let g = assert_accepts(&b);
    let path = g.path().display().to_string();
    let e = g.get_f32_array("tokenizer.ggml.scores").unwrap_err().to_string();
    assert_eq!(e, format!("`{path}`: key `tokenizer.ggml.scores` is array of UINT8, expected array of FLOAT32"));
    let e = g.get_u32("llama.block_count").unwrap_err().to_string();
    assert!(e.ends_with("key `llama.block_count` is INT32, expected UINT32"), "{e}");
    let e = g.get_u32("general.architecture").unwrap_err().to_string();
    assert!(e.ends_with("key `general.architecture` is STRING, expected UINT32"), "{e}");
    let e = g.get_str_array("general.architecture").unwrap_err().to_string();
    assert!(e.ends_with("key `general.architecture` is STRING, expected an array"), "{e}");
    let e = g.get_str("llama.context_length").unwrap_err().to_string();
    assert!(e.ends_with("key `llama.context_length` is missing"), "{e}");
    assert_eq!(g.metadata().opt_u32("llama.context_length"), Ok(None));
    assert!(g.metadata().opt_u32("llama.block_count").is_err());
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u8_array("tokenizer.ggml.scores").unwrap(), &[1, 2, 3]);
}

// ---------------------------------------------------------------- G12 and truncation

fn valid_file() -> Vec<u8> {
    let mut md = Metadata::new();
    md.push("general.architecture", "llama").unwrap();
    md.push("llama.block_count", 2u32).unwrap();
    md.push("tokenizer.ggml.tokens", vec!["<s>", "</s>", "hello"]).unwrap();
    md.push("tokenizer.ggml.scores", vec![0.0f32, -1.0, -2.5]).unwrap();
    let q = vec![7u8; 34 * 2];
    let f = vec![9u8; 4 * 5];
    write_gguf(
        Vec::new(),
        &md,
        &[(TensorSpec::new("w", GgmlType::Q8_0, &[32, 2]), q.as_slice()), (TensorSpec::new("n", GgmlType::F32, &[5]), f.as_slice())],
    )
    .unwrap()
}

#[test]
fn truncated_at_every_point() {
    let full = valid_file();
    let g = assert_accepts(&full);
    let data_start = g.data_start();
    let last_end = g.tensors().last().map(|t| t.data_offset + t.nbytes).unwrap();
    for cut in 0..full.len() {
        let (_f, r) = open_bytes(&full[..cut]);
        let cut = cut as u64;
        if cut >= last_end {
            r.unwrap_or_else(|e| panic!("prefix of {cut} bytes (only padding cut) was refused: {e}"));
            continue;
        }
        let msg = r.expect_err("a truncated file opened").to_string();
        let expected = if cut < 24 {
            "too small"
        } else if cut < data_start {
            "file is truncated"
        } else {
            "file is truncated: tensor"
        };
        // Inside the header, a cut can also land in a length field whose value then exceeds what is left.
        assert!(msg.contains(expected) || msg.contains("bytes are left") || msg.contains("bytes left in the file"), "cut at {cut}: {msg}");
    }
}

#[test]
fn truncated_messages_name_the_field() {
    // Inside the first key's bytes: 20 declared, 10 there.
    let b = [header(0, 1), 20u64.to_le_bytes().to_vec(), vec![b'k'; 10]].concat();
    assert_rejects(&b, "the key of metadata entry 0 has length 20 (20 bytes at least), but only 10 bytes are left");
    // Inside the value type of the first key.
    let b = [header(0, 1), string(b"abcdefgh"), vec![4, 0]].concat();
    assert_rejects(&b, "file is truncated: it ends inside the value type of key `abcdefgh` (at byte 40, 4 bytes needed, 2 left)");
    // Inside a tensor's dimensions.
    let b = [header(1, 0), string(b"token_embd.w"), 2u32.to_le_bytes().to_vec(), 8u64.to_le_bytes().to_vec(), vec![0; 5]].concat();
    assert_rejects(&b, "file is truncated: it ends inside ne[1] of tensor `token_embd.w` (at byte 56, 8 bytes needed, 5 left)");
}

#[test]
fn g12_file_shrinking_after_open_is_an_error_not_zeros() {
    let full = valid_file();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&full).unwrap();
    f.flush().unwrap();
    let g = GgufFile::open(f.path()).unwrap();
    let n = g.tensor("n").unwrap().clone();
    assert_eq!(g.read(&n).unwrap(), [9u8; 20]);
    f.as_file().set_len(n.data_offset + 4).unwrap();
    let e = g.read(&n).unwrap_err();
    assert!(matches!(e, GgufError::UnexpectedEof { .. }), "{e}");
    assert!(e.to_string().contains("unexpected end of file reading tensor `n`"));
    let mut sink = Vec::new();
    assert!(g.copy_to(&n, &mut sink).is_err());
}

#[test]
fn g12_reading_a_foreign_tensor_info_is_refused() {
    let g = assert_accepts(&valid_file());
    let mut t = g.tensor("n").unwrap().clone();
    t.nbytes = u64::MAX / 2;
    let e = g.read(&t).unwrap_err().to_string();
    assert!(e.contains("tensor `n` is not described by this file's header"), "{e}");
    let mut buf = [0u8; 20];
    t.nbytes = 20;
    t.data_offset += 1;
    assert!(g.read_into(&t, &mut buf).is_err());
}

#[test]
fn huge_claims_in_a_100_byte_file_fail_fast() {
    let start = std::time::Instant::now();
    let claims: Vec<Vec<u8>> = vec![
        [header(1 << 62, 1 << 62), vec![0xff; 76]].concat(),
        [header(0, 1), kv_array("a", T_U8, 1 << 30, &[0; 50])].concat(),
        [header(0, 1), kv_array("a", T_STRING, 1 << 30, &[0; 50])].concat(),
        [header(0, 1), kv_raw(b"s", T_STRING, &(u64::MAX - 1).to_le_bytes()), vec![0; 50]].concat(),
        [header(1, 0), tensor_info(b"t", &[I64_MAX], I8, 0), vec![0; 40]].concat(),
    ];
    for b in claims {
        let mut b = b;
        b.resize(100, 0);
        let (_f, r) = open_bytes(&b);
        assert!(r.is_err());
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn every_value_type_id_parses() {
    let kvs: Vec<Vec<u8>> = vec![
        kv_raw(b"u8", 0, &[200]),
        kv_raw(b"i8", 1, &[0xff]),
        kv_raw(b"u16", 2, &[1, 2]),
        kv_raw(b"i16", 3, &(-2i16).to_le_bytes()),
        kv_raw(b"u32", 4, &7u32.to_le_bytes()),
        kv_raw(b"i32", 5, &(-7i32).to_le_bytes()),
        kv_raw(b"f32", 6, &1.5f32.to_le_bytes()),
        kv_raw(b"bool", 7, &[1]),
        kv_raw(b"str", 8, &string("héllo".as_bytes())),
        kv_array("arr", 8, 2, &[string(b"a"), string(b"")].concat()),
        kv_raw(b"u64", 10, &u64::MAX.to_le_bytes()),
        kv_raw(b"i64", 11, &i64::MIN.to_le_bytes()),
        kv_raw(b"f64", 12, &(-0.25f64).to_le_bytes()),
    ];
    let g = assert_accepts(&file(&kvs, &[], &[]));
    let m = g.metadata();
    assert_eq!(m.get("u8"), Some(&Value::U8(200)));
    assert_eq!(m.get("i8"), Some(&Value::I8(-1)));
    assert_eq!(m.get("u16"), Some(&Value::U16(0x0201)));
    assert_eq!(m.get("i16"), Some(&Value::I16(-2)));
    assert_eq!(m.get_u32("u32"), Ok(7));
    assert_eq!(m.get_i32("i32"), Ok(-7));
    assert_eq!(m.get_f32("f32"), Ok(1.5));
    assert_eq!(m.get_bool("bool"), Ok(true));
    assert_eq!(m.get_str("str"), Ok("héllo"));
    assert_eq!(m.get_str_array("arr").unwrap().iter().collect::<Vec<_>>(), ["a", ""]);
    assert_eq!(m.get_u64("u64"), Ok(u64::MAX));
    assert_eq!(m.get_i64("i64"), Ok(i64::MIN));
    assert_eq!(m.get_f64("f64"), Ok(-0.25));
    let keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64"]);
}
