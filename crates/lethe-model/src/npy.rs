//! A minimal reader for NumPy `.npy` files (format 1.0-3.0, C order, little-endian `<f4`,
//! `<i4` and `|u1`): enough for the package's fixtures and probe images, without a dependency.
//! Invariant: the payload length must equal the product of the declared shape, or reading fails.

use crate::error::{ModelError, Result};
use ndarray::{ArrayD, IxDyn};
use std::path::Path;

/// An array read from a .npy file.
#[derive(Debug, Clone)]
pub enum NpyArray {
    F32(ArrayD<f32>),
    I32(ArrayD<i32>),
    U8(ArrayD<u8>),
}

/// Reads a .npy file of dtype f32, i32 or u8.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    parse_npy(&bytes).map_err(|reason| ModelError::Npy {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads a .npy file that must hold f32 values.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    match read_npy(path)? {
        NpyArray::F32(a) => Ok(a),
        _ => Err(npy_err(path, "expected dtype <f4")),
    }
}

/// Reads a .npy file that must hold i32 values.
pub fn read_i32(path: &Path) -> Result<ArrayD<i32>> {
    match read_npy(path)? {
        NpyArray::I32(a) => Ok(a),
        _ => Err(npy_err(path, "expected dtype <i4")),
    }
}

/// Reads a .npy file that must hold u8 values.
pub fn read_u8(path: &Path) -> Result<ArrayD<u8>> {
    match read_npy(path)? {
        NpyArray::U8(a) => Ok(a),
        _ => Err(npy_err(path, "expected dtype |u1")),
    }
}

fn npy_err(path: &Path, reason: &str) -> ModelError {
    ModelError::Npy {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn parse_npy(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| "header is not UTF-8")?;
    let descr = dict_value(header, "descr").ok_or("header has no descr")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or("header has no fortran_order")?;
    if fortran.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape = parse_shape(header)?;
    let count: usize = shape.iter().product();
    let data = &bytes[end..];
    let width = match descr {
        "<f4" | "<i4" => 4,
        "|u1" | "<u1" => 1,
        other => return Err(format!("unsupported dtype {other}")),
    };
    if data.len() != count * width {
        return Err(format!(
            "payload has {} bytes, shape {:?} needs {}",
            data.len(),
            shape,
            count * width
        ));
    }
    let shape = IxDyn(&shape);
    let err = |e: ndarray::ShapeError| e.to_string();
    Ok(match descr {
        "<f4" => NpyArray::F32(
            ArrayD::from_shape_vec(
                shape,
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
            .map_err(err)?,
        ),
        "<i4" => NpyArray::I32(
            ArrayD::from_shape_vec(
                shape,
                data.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
            .map_err(err)?,
        ),
        _ => NpyArray::U8(ArrayD::from_shape_vec(shape, data.to_vec()).map_err(err)?),
    })
}

/// The text after `'key':` up to the next top-level comma (the shape is handled separately).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let at = header.find(&pat)? + pat.len();
    let rest = header[at..].trim_start();
    let stop = rest.find(',').unwrap_or(rest.len());
    Some(rest[..stop].trim())
}

fn parse_shape(header: &str) -> std::result::Result<Vec<usize>, String> {
    let at = header.find("'shape':").ok_or("header has no shape")?;
    let rest = &header[at..];
    let open = rest.find('(').ok_or("bad shape")?;
    let close = rest.find(')').ok_or("bad shape")?;
    rest[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry {s:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn f32_matrix_is_read_in_c_order() {
        let payload: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let NpyArray::F32(a) = parse_npy(&npy("<f4", "(2, 3)", &payload)).unwrap() else {
            panic!("wrong dtype")
        };
        assert_eq!(a.shape(), &[2, 3]);
        assert_eq!(a[[1, 0]], 4.0);
    }

    #[test]
    fn scalar_shape_reads_one_value() {
        let NpyArray::I32(a) = parse_npy(&npy("<i4", "()", &7i32.to_le_bytes())).unwrap() else {
            panic!("wrong dtype")
        };
        assert_eq!(a.ndim(), 0);
        assert_eq!(a.iter().next(), Some(&7));
    }

    #[test]
    fn short_payload_is_rejected() {
        let err = parse_npy(&npy("|u1", "(4,)", &[1, 2, 3])).unwrap_err();
        assert!(err.contains("payload"), "{err}");
    }

    #[test]
    fn unsupported_dtype_is_rejected() {
        let err = parse_npy(&npy("<f8", "(1,)", &[0; 8])).unwrap_err();
        assert!(err.contains("<f8"), "{err}");
    }
}
