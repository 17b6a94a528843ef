//! The kNN datastore: keys (hidden states) and values (token ids), growable and saveable.

use std::io::{self, Read, Write};
use std::path::Path;

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{KdError, Result};

use super::Dnkd;

/// Magic bytes and version of [`Datastore::write_to`]'s binary format.
const MAGIC: &[u8; 8] = b"KDNNDS01";

/// A growable kNN datastore: `M` keys of dimension `H` (`f32`) and one token id per key.
///
/// In kNN-MT / kNN-KD a key is the decoder's hidden state at a target position (the input of
/// the output projection) and its value is the token that follows there (the target token). The
/// store only holds the pairs; searching is done by a [`super::NeighbourIndex`].
///
/// ```text
/// keys   [M][H]   row j = hidden state of the j-th stored position
/// values [M]      values[j] = the target token id at that position
/// ```
///
/// Serialises with serde (the invariants are checked when deserialising) and to a plain
/// little-endian binary file ([`Datastore::save`] / [`Datastore::load`]).
///
/// # Errors
/// Pushing a key of the wrong dimension gives [`KdError::ShapeMismatch`]; a non-finite key
/// gives [`KdError::InvalidHyperparameter`] naming `datastore_keys`.
///
/// # Example
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use kd_losses::teachers::dnkd::Datastore;
///
/// let device = Device::flex();
/// let mut store = Datastore::new(2);
/// store.push(&[0.0, 1.0], 7)?;
/// // A batch of hidden states with their target ids; -100 marks padding and is skipped.
/// let hidden = Tensor::<2>::from_floats([[1.0, 0.0], [2.0, 2.0]], &device);
/// let ids = Tensor::<1, Int>::from_ints([3, -100], &device);
/// store.push_tensor(hidden, ids)?;
/// assert_eq!(store.len(), 2);
/// assert_eq!(store.key(1), &[1.0, 0.0]);
/// assert_eq!(store.values(), &[7, 3]);
/// # Ok::<(), kd_losses::KdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDatastore")]
pub struct Datastore {
    dim: usize,
    keys: Vec<f32>,
    values: Vec<u32>,
}

/// The serialised fields, checked by `TryFrom` before they become a [`Datastore`].
#[derive(Deserialize)]
struct RawDatastore {
    dim: usize,
    keys: Vec<f32>,
    values: Vec<u32>,
}

impl TryFrom<RawDatastore> for Datastore {
    type Error = KdError;
    fn try_from(raw: RawDatastore) -> Result<Self> {
        Datastore::from_rows(raw.dim, raw.keys, raw.values)
    }
}

impl Datastore {
    /// An empty store of `dim`-dimensional keys.
    pub fn new(dim: usize) -> Self {
        Self { dim, keys: Vec::new(), values: Vec::new() }
    }

    /// A store from row-major keys `[M·dim]` and values `[M]`.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `keys.len() != values.len()·dim` or `dim = 0`;
    /// [`KdError::InvalidHyperparameter`] for a non-finite key entry.
    pub fn from_rows(dim: usize, keys: Vec<f32>, values: Vec<u32>) -> Result<Self> {
        let mut store = Self::new(dim);
        store.push_rows(&keys, &values)?;
        Ok(store)
    }

    /// Key dimension `H`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of stored entries `M`.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// `true` when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// All keys, row-major. Shape: `[M·H]`.
    pub fn keys(&self) -> &[f32] {
        &self.keys
    }

    /// All values (token ids). Shape: `[M]`.
    pub fn values(&self) -> &[u32] {
        &self.values
    }

    /// Key of entry `j`. Shape: `[H]`.
    ///
    /// # Panics
    /// When `j >= len()`.
    pub fn key(&self, j: usize) -> &[f32] {
        &self.keys[j * self.dim..(j + 1) * self.dim]
    }

    /// Appends one entry.
    ///
    /// # Errors
    /// As [`Datastore::push_rows`].
    pub fn push(&mut self, key: &[f32], value: u32) -> Result<()> {
        self.push_rows(key, &[value])
    }

    /// Appends `values.len()` entries with row-major keys `[n·H]`. Nothing is appended on error.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when `keys.len() != values.len()·H` or `H = 0`;
    /// [`KdError::InvalidHyperparameter`] naming `datastore_keys` for a non-finite entry.
    pub fn push_rows(&mut self, keys: &[f32], values: &[u32]) -> Result<()> {
        if self.dim == 0 || keys.len() != values.len() * self.dim {
            return Err(KdError::ShapeMismatch {
                what: "datastore keys [entries, dim]".into(),
                expected: vec![values.len(), self.dim.max(1)],
                got: vec![keys.len() / self.dim.max(1), self.dim],
            });
        }
        if let Some(bad) = keys.iter().find(|x| !x.is_finite()) {
            return Err(KdError::InvalidHyperparameter {
                loss: Dnkd::ID,
                name: "datastore_keys",
                expected: "finite values",
                got: f64::from(*bad),
            });
        }
        self.keys.extend_from_slice(keys);
        self.values.extend_from_slice(values);
        Ok(())
    }

    /// Appends a batch of hidden states `[rows, H]` with their target ids `[rows]` (any float
    /// dtype, any device; read to the host). Rows whose id is negative (`-100` padding or
    /// ignored positions) are skipped. Returns the number of entries appended.
    ///
    /// # Errors
    /// [`KdError::ShapeMismatch`] when the rows or `H` disagree; [`KdError::InvalidHyperparameter`]
    /// for a non-finite key or an id above `u32::MAX`.
    pub fn push_tensor(&mut self, hidden: Tensor<2>, ids: Tensor<1, Int>) -> Result<usize> {
        let [rows, dim] = hidden.dims();
        if ids.dims()[0] != rows || dim != self.dim {
            return Err(KdError::ShapeMismatch {
                what: "hidden [rows, dim] vs datastore dim and ids rows".into(),
                expected: vec![ids.dims()[0], self.dim],
                got: vec![rows, dim],
            });
        }
        let keys = host_f32(hidden);
        let ids = host_i64(ids);
        let (mut kept_keys, mut kept_ids) = (Vec::new(), Vec::new());
        for (row, &id) in ids.iter().enumerate() {
            if id < 0 {
                continue;
            }
            let id = u32::try_from(id).map_err(|_| KdError::InvalidHyperparameter {
                loss: Dnkd::ID,
                name: "datastore_values",
                expected: "token ids in [0, 2^32)",
                got: id as f64,
            })?;
            kept_keys.extend_from_slice(&keys[row * dim..(row + 1) * dim]);
            kept_ids.push(id);
        }
        self.push_rows(&kept_keys, &kept_ids)?;
        Ok(kept_ids.len())
    }

    /// Writes the store in a plain binary format: the 8 bytes `KDNNDS01`, `H` and `M` as `u64`,
    /// the keys as `f32`, the values as `u32`, all little-endian.
    ///
    /// # Errors
    /// Any I/O error of `w`.
    pub fn write_to<W: Write>(&self, mut w: W) -> io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&(self.dim as u64).to_le_bytes())?;
        w.write_all(&(self.len() as u64).to_le_bytes())?;
        let mut buf = Vec::with_capacity(4 * (self.keys.len() + self.values.len()));
        self.keys.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        self.values.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        w.write_all(&buf)?;
        w.flush()
    }

    /// Reads a store written by [`Datastore::write_to`].
    ///
    /// # Errors
    /// I/O errors of `r`; [`io::ErrorKind::InvalidData`] for a wrong header, a truncated body or
    /// keys that fail [`Datastore::from_rows`].
    pub fn read_from<R: Read>(mut r: R) -> io::Result<Self> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid(format!("not a kd-losses datastore (header {magic:?})")));
        }
        let mut word = [0u8; 8];
        r.read_exact(&mut word)?;
        let dim = usize::try_from(u64::from_le_bytes(word)).map_err(|e| invalid(e.to_string()))?;
        r.read_exact(&mut word)?;
        let len = usize::try_from(u64::from_le_bytes(word)).map_err(|e| invalid(e.to_string()))?;
        let n_keys = len.checked_mul(dim).ok_or_else(|| invalid("size overflow".into()))?;
        let mut body = Vec::new();
        r.read_to_end(&mut body)?;
        if body.len() != 4 * (n_keys + len) {
            return Err(invalid(format!(
                "body of {} bytes, expected {} for {len} entries of dim {dim}",
                body.len(),
                4 * (n_keys + len)
            )));
        }
        let (key_bytes, value_bytes) = body.split_at(4 * n_keys);
        let word4 = |c: &[u8]| [c[0], c[1], c[2], c[3]];
        let keys = key_bytes.chunks_exact(4).map(|c| f32::from_le_bytes(word4(c))).collect();
        let values = value_bytes.chunks_exact(4).map(|c| u32::from_le_bytes(word4(c))).collect();
        Self::from_rows(dim, keys, values).map_err(|e| invalid(e.to_string()))
    }

    /// Writes the store to a file (see [`Datastore::write_to`]).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn save(&self, path: impl AsRef<Path>) -> io::Result<()> {
        self.write_to(io::BufWriter::new(std::fs::File::create(path)?))
    }

    /// Reads a store from a file written by [`Datastore::save`].
    ///
    /// # Errors
    /// As [`Datastore::read_from`].
    pub fn load(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::read_from(io::BufReader::new(std::fs::File::open(path)?))
    }
}

/// The values of a float tensor of any dtype, as `f32`, row-major.
pub(crate) fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("a float tensor reads back as f32")
}

/// The values of an integer tensor, as `i64`.
pub(crate) fn host_i64<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data().try_into_vec_as::<i64>().expect("an int tensor reads back as i64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn sample() -> Datastore {
        Datastore::from_rows(3, vec![0.5, -1.0, 2.0, 3.0, 0.0, -0.25], vec![4, 9]).unwrap()
    }

    #[test]
    fn push_grows_and_checks_dim_and_finiteness() {
        let mut s = sample();
        s.push(&[1.0, 1.0, 1.0], 2).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.key(2), &[1.0, 1.0, 1.0]);
        let e = s.push(&[1.0, 1.0], 2).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
        let e = s.push(&[1.0, f32::NAN, 1.0], 2).unwrap_err();
        assert!(matches!(e, KdError::InvalidHyperparameter { name: "datastore_keys", .. }));
        assert_eq!(s.len(), 3, "nothing appended on error");
        assert!(Datastore::from_rows(0, vec![], vec![1]).is_err());
    }

    #[test]
    fn push_tensor_skips_negative_ids_and_checks_shapes() {
        let d = Device::flex();
        let mut s = Datastore::new(2);
        let h = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], &d);
        let n = s.push_tensor(h.clone(), Tensor::<1, Int>::from_ints([5, -100, 6], &d)).unwrap();
        assert_eq!(n, 2);
        assert_eq!(s.keys(), &[1.0, 2.0, 5.0, 6.0]);
        assert_eq!(s.values(), &[5, 6]);
        let e = s.push_tensor(h, Tensor::<1, Int>::from_ints([1, 2], &d)).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
    }

    #[test]
    fn binary_and_serde_round_trips() {
        let s = sample();
        let mut buf = Vec::new();
        s.write_to(&mut buf).unwrap();
        assert_eq!(buf.len(), 8 + 16 + 4 * (6 + 2));
        assert_eq!(Datastore::read_from(buf.as_slice()).unwrap(), s);
        assert!(Datastore::read_from(&buf[..buf.len() - 1]).is_err(), "truncated");
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(Datastore::read_from(bad.as_slice()).is_err(), "bad magic");

        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Datastore>(&json).unwrap(), s);
        let broken = r#"{"dim": 2, "keys": [1.0, 2.0, 3.0], "values": [1, 2]}"#;
        assert!(serde_json::from_str::<Datastore>(broken).is_err());

        let path = std::env::temp_dir().join(format!("kd_dnkd_store_{}.bin", std::process::id()));
        s.save(&path).unwrap();
        assert_eq!(Datastore::load(&path).unwrap(), s);
        std::fs::remove_file(path).unwrap();
    }
}
