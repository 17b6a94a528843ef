//! The teacher-logits file: header, checksummed block records, index and footer; its writer,
//! its memory-mapped reader, a streaming reader, and the logical set of shards.
//!
//! ```text
//! offset  size  field
//! 0       8     magic  "KDTLOGIT"
//! 8       4     format version (u32 LE) = 1
//! 12      4     header length H (u32 LE)
//! 16      H     header: UTF-8 JSON, a [`Header`]
//! 16+H    4     CRC-32 of the header bytes
//! ...           one record per data block, in block order:
//!               payload length L (u32 LE), payload (L bytes, [`super::codec`]), CRC-32 of it
//! ...           index: per record, its offset (u64 LE) and the hash of its block's tokens (u64 LE)
//! ...           CRC-32 of the index (u32 LE)
//! end−24  8     index offset (u64 LE)
//! end−16  8     record count (u64 LE)
//! end−8   8     magic  "KDTLEND1"
//! ```
//!
//! A writer fills `<name>.partial` and renames it when the footer is written, so a file with
//! the final name is complete; a reader checks the magic numbers, the version, the header
//! checksum, the footer and the index checksum when it opens a file, and each record's
//! checksum when it reads it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::codec::{self, Quantizer};
use crate::data::TokenDataset;
use crate::error::{Result, TrainError};

const MAGIC: &[u8; 8] = b"KDTLOGIT";
const END_MAGIC: &[u8; 8] = b"KDTLEND1";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// File name extension of teacher-logits shards.
pub const EXTENSION: &str = "kdtl";
const FOOTER: usize = 24;

/// A deterministic slice of the data: shard `index` of `count` holds blocks
/// `⌊index·n/count⌋ .. ⌊(index+1)·n/count⌋` of `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Zero-based shard number.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// The whole data as one shard.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N` (`0 ≤ I < N`).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the text.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || TrainError::config("shard", "I/N with 0 ≤ I < N (e.g. 0/4)", text);
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) =
            (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// The blocks of `n` this shard holds.
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        self.index * n / self.count..(self.index + 1) * n / self.count
    }

    /// The file name of this shard: `shard-00002-of-00004.kdtl`.
    pub fn file_name(&self) -> String {
        format!("shard-{:05}-of-{:05}.{EXTENSION}", self.index, self.count)
    }
}

/// Who computed the distributions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeacherIdentity {
    /// A name (the teacher's directory, its `model_type` and size).
    pub name: String,
    /// `sha256:` of its config and weights.
    pub fingerprint: String,
}

/// The data the file covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetPosition {
    /// Blocks in the whole data set (all shards).
    pub blocks: usize,
    /// Tokens per block.
    pub seq_len: usize,
    /// `sha256:` of every block's token ids ([`dataset_fingerprint`]).
    pub fingerprint: String,
    /// This file's shard.
    pub shard: Shard,
    /// The first block this file holds.
    pub first_block: usize,
    /// How many blocks it holds.
    pub num_blocks: usize,
}

/// The self-describing header of a teacher-logits file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always `"kd-teacher-logits"`.
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The teacher's vocabulary size (ids are `< vocab_size`).
    pub vocab_size: usize,
    /// Entries per position.
    pub k: usize,
    /// The temperature the log-probabilities were computed at (`softmax(z / T)`).
    pub temperature: f64,
    /// Quantisation step `Δ` of the log-probabilities, in nats.
    pub logprob_step: f32,
    /// Largest code width in bits.
    pub logprob_bits: u32,
    /// `sha256:` of the tokenizer the data was tokenized with (`tokenizer.json`).
    pub tokenizer: String,
    /// The teacher.
    pub teacher: TeacherIdentity,
    /// The data and this file's place in it.
    pub dataset: DatasetPosition,
    /// The program that wrote it.
    pub created_by: String,
}

impl Header {
    /// The quantiser the header describes.
    pub fn quantizer(&self) -> Quantizer {
        Quantizer { step: self.logprob_step, bits: self.logprob_bits }
    }

    /// Whether two shards' headers describe the same logical file (all but the shard place).
    fn same_run(&self, other: &Header) -> bool {
        let strip = |h: &Header| {
            let mut h = h.clone();
            h.dataset.first_block = 0;
            h.dataset.num_blocks = 0;
            h.dataset.shard.index = 0;
            h
        };
        strip(self) == strip(other)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Err(corrupt(path, reason));
        if self.format != "kd-teacher-logits" || self.version != FORMAT_VERSION {
            return bad(format!(
                "header says format {:?} version {}, expected \"kd-teacher-logits\" version {FORMAT_VERSION}",
                self.format, self.version
            ));
        }
        if self.k == 0 || self.k > self.vocab_size {
            return bad(format!("k = {} for a vocabulary of {}", self.k, self.vocab_size));
        }
        if !self.quantizer().is_valid() {
            return bad(format!(
                "quantiser step {} / {} bits is not valid",
                self.logprob_step, self.logprob_bits
            ));
        }
        let d = &self.dataset;
        let shard = d.shard.count > 0 && d.shard.index < d.shard.count;
        if !shard || d.shard.range(d.blocks) != (d.first_block..d.first_block + d.num_blocks) {
            return bad(format!(
                "shard {}/{} of {} blocks cannot hold blocks {}..{}",
                d.shard.index,
                d.shard.count,
                d.blocks,
                d.first_block,
                d.first_block + d.num_blocks
            ));
        }
        Ok(())
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::TeacherLogits { path: path.to_path_buf(), reason: reason.into() }
}

/// Checks a record's payload against its stored CRC-32 (`block` names it in the error).
fn check_record(path: &Path, block: usize, payload: &[u8], crc: u32) -> Result<()> {
    if crc32fast::hash(payload) == crc {
        return Ok(());
    }
    Err(corrupt(path, format!("block {block}: checksum mismatch (the record is corrupt)")))
}

fn sha256_of_ids(hasher: &mut Sha256, ids: &[u32]) {
    for id in ids {
        hasher.update(id.to_le_bytes());
    }
}

/// The hash of one block's input ids (the first 8 bytes of their SHA-256, little-endian ids).
pub fn block_hash(input_ids: &[u32]) -> u64 {
    let mut h = Sha256::new();
    sha256_of_ids(&mut h, input_ids);
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// `sha256:` of every block's input ids in order (with the block length), the data set's
/// identity in a header.
pub fn dataset_fingerprint(data: &TokenDataset) -> String {
    let mut h = Sha256::new();
    h.update((data.seq_len() as u64).to_le_bytes());
    for b in &data.blocks {
        sha256_of_ids(&mut h, &b.input_ids);
    }
    format!("sha256:{}", hex(&h.finalize()))
}

/// `sha256:` of some bytes.
pub fn fingerprint_bytes(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    format!("sha256:{}", hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes one teacher-logits file (one shard), block by block.
#[derive(Debug)]
pub struct TeacherLogitsWriter {
    path: PathBuf,
    partial: PathBuf,
    out: BufWriter<File>,
    header: Header,
    offset: u64,
    index: Vec<(u64, u64)>,
    positions: u64,
}

impl TeacherLogitsWriter {
    /// Starts `path` (written as `path.partial` until [`TeacherLogitsWriter::finish`]).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for an inconsistent header; [`TrainError::Io`].
    pub fn create(path: &Path, header: Header) -> Result<Self> {
        header.check(path).map_err(|e| match e {
            TrainError::TeacherLogits { reason, .. } => TrainError::InvalidConfig {
                name: "header",
                expected: "a consistent header",
                got: reason,
            },
            other => other,
        })?;
        let partial = path.with_extension(format!("{EXTENSION}.partial"));
        let file = File::create(&partial).map_err(|e| TrainError::io(&partial, e))?;
        let mut out = BufWriter::new(file);
        let json = serde_json::to_vec(&header).expect("headers serialise");
        let mut head = Vec::with_capacity(20 + json.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        head.extend_from_slice(&(json.len() as u32).to_le_bytes());
        head.extend_from_slice(&json);
        head.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        out.write_all(&head).map_err(|e| TrainError::io(&partial, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            out,
            header,
            offset: head.len() as u64,
            index: Vec::new(),
            positions: 0,
        })
    }

    /// The header being written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Where the file is written until [`TeacherLogitsWriter::finish`] renames it.
    pub fn partial_path(&self) -> &Path {
        &self.partial
    }

    /// Appends the next block: its input ids (for the index hash) and its `[seq_len, k]`
    /// top-k ids and log-probabilities with one tail mass per position.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when the block does not fit the header; [`TrainError::Io`].
    pub fn write_block(
        &mut self,
        input_ids: &[u32],
        ids: &[u32],
        logprobs: &[f32],
        tails: &[f32],
    ) -> Result<()> {
        let (n, k) = (self.header.dataset.seq_len, self.header.k);
        if self.index.len() >= self.header.dataset.num_blocks {
            return Err(TrainError::config(
                "block",
                "no more blocks than the header's num_blocks",
                self.index.len() + 1,
            ));
        }
        if input_ids.len() != n || tails.len() != n || ids.len() != n * k || logprobs.len() != n * k
        {
            return Err(TrainError::config(
                "block",
                "seq_len input ids and tails and seq_len·k ids and log-probs",
                format!("{} ids, {} tails, {} top-k ids", input_ids.len(), tails.len(), ids.len()),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.header.vocab_size) {
            return Err(TrainError::config("block", "ids below the vocabulary size", bad));
        }
        let payload = codec::encode_block(ids, logprobs, tails, k, self.header.quantizer());
        let io = |e| TrainError::io(&self.partial, e);
        self.out.write_all(&(payload.len() as u32).to_le_bytes()).map_err(io)?;
        self.out.write_all(&payload).map_err(io)?;
        self.out.write_all(&crc32fast::hash(&payload).to_le_bytes()).map_err(io)?;
        self.index.push((self.offset, block_hash(input_ids)));
        self.offset += payload.len() as u64 + 8;
        self.positions += n as u64;
        Ok(())
    }

    /// Writes the index and footer, syncs and renames the file to its final name; returns the
    /// positions written and the file's size in bytes.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when fewer blocks than the header's were written;
    /// [`TrainError::Io`].
    pub fn finish(mut self) -> Result<(u64, u64)> {
        if self.index.len() != self.header.dataset.num_blocks {
            return Err(TrainError::config(
                "blocks",
                "as many blocks as the header's num_blocks",
                self.index.len(),
            ));
        }
        let mut tail = Vec::with_capacity(self.index.len() * 16 + 28);
        for (off, hash) in &self.index {
            tail.extend_from_slice(&off.to_le_bytes());
            tail.extend_from_slice(&hash.to_le_bytes());
        }
        let crc = crc32fast::hash(&tail);
        tail.extend_from_slice(&crc.to_le_bytes());
        tail.extend_from_slice(&self.offset.to_le_bytes());
        tail.extend_from_slice(&(self.index.len() as u64).to_le_bytes());
        tail.extend_from_slice(END_MAGIC);
        let io = |e| TrainError::io(&self.partial, e);
        self.out.write_all(&tail).map_err(io)?;
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        let bytes = self.offset + tail.len() as u64;
        std::fs::rename(&self.partial, &self.path).map_err(|e| TrainError::io(&self.path, e))?;
        Ok((self.positions, bytes))
    }
}

/// One decoded block: `[seq_len, k]` ids (ascending per position) and log-probabilities, and one
/// tail mass per position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseBlock {
    /// Top-k ids, row-major `[seq_len, k]`.
    pub ids: Vec<u32>,
    /// Their log-probabilities at the header's temperature, `Σ_k exp = 1 − tail` per position.
    pub logprobs: Vec<f32>,
    /// Mass outside the top-k, per position.
    pub tails: Vec<f32>,
}

/// Parses the header at the start of `bytes` (or of a stream's first bytes); returns it and
/// the offset of the first record.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(Header, usize)> {
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(corrupt(path, "not a teacher-logits file (no KDTLOGIT magic at its start)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!("format version {version}; this kd reads version {FORMAT_VERSION}"),
        ));
    }
    let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    if bytes.len() < 20 + len {
        return Err(corrupt(path, "truncated inside its header"));
    }
    let json = &bytes[16..16 + len];
    let crc = u32::from_le_bytes(bytes[16 + len..20 + len].try_into().expect("4 bytes"));
    if crc32fast::hash(json) != crc {
        return Err(corrupt(path, "the header's checksum does not match (corrupt header)"));
    }
    let header: Header = serde_json::from_slice(json)
        .map_err(|e| corrupt(path, format!("unreadable header: {e}")))?;
    header.check(path)?;
    Ok((header, 20 + len))
}

/// One teacher-logits file, memory-mapped.
#[derive(Debug)]
pub struct TeacherLogitsFile {
    path: PathBuf,
    map: memmap2::Mmap,
    header: Header,
    /// Per record: offset and token hash.
    index: Vec<(u64, u64)>,
}

impl TeacherLogitsFile {
    /// Opens and checks a file: magic numbers, version, header and index checksums, footer,
    /// record offsets.
    ///
    /// # Errors
    /// [`TrainError::TeacherLogits`] naming the file and the problem; [`TrainError::Io`].
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
        // SAFETY: the map is read-only and the file is not modified while it is open (the
        // format is written once, under a `.partial` name, and renamed when complete). A file
        // changed underneath is caught by the per-record checksums at read time.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| TrainError::io(path, e))?;
        let (header, first) = parse_header(path, &map)?;
        let len = map.len();
        if len < first + FOOTER || &map[len - 8..] != END_MAGIC {
            return Err(corrupt(
                path,
                "truncated: no footer (the writer did not finish, or the copy was cut short)",
            ));
        }
        let u64_at = |at: usize| u64::from_le_bytes(map[at..at + 8].try_into().expect("8 bytes"));
        let (index_at, count) = (u64_at(len - FOOTER) as usize, u64_at(len - 16) as usize);
        let index_end = index_at.saturating_add(count.saturating_mul(16));
        if index_at < first || index_end.checked_add(4) != Some(len - FOOTER) {
            return Err(corrupt(path, "the footer's index position does not fit the file"));
        }
        if count != header.dataset.num_blocks {
            return Err(corrupt(
                path,
                format!("{count} records, the header says {} blocks", header.dataset.num_blocks),
            ));
        }
        let index_bytes = &map[index_at..index_end];
        let crc = u32::from_le_bytes(map[index_end..index_end + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(index_bytes) != crc {
            return Err(corrupt(path, "the index's checksum does not match (corrupt index)"));
        }
        let index: Vec<(u64, u64)> = index_bytes
            .chunks_exact(16)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                    u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
                )
            })
            .collect();
        let mut expected = first as u64;
        for (i, &(off, _)) in index.iter().enumerate() {
            let ok = off == expected && off as usize + 4 <= index_at;
            if !ok {
                return Err(corrupt(
                    path,
                    format!("record {i}'s offset {off} is not where it lies"),
                ));
            }
            let len =
                u32::from_le_bytes(map[off as usize..off as usize + 4].try_into().expect("4"));
            expected = off + 8 + u64::from(len);
        }
        if expected as usize != index_at {
            return Err(corrupt(path, "the records do not end where the index starts"));
        }
        Ok(Self { path: path.to_path_buf(), map, header, index })
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of the file in bytes.
    pub fn bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// Hash of the tokens of local record `i` ([`block_hash`]).
    pub fn token_hash(&self, i: usize) -> u64 {
        self.index[i].1
    }

    /// Checks every record's checksum (one sequential pass over the file, nothing decoded).
    ///
    /// # Errors
    /// [`TrainError::TeacherLogits`] naming the file and the first corrupt block.
    pub fn verify_records(&self) -> Result<()> {
        (0..self.index.len()).try_for_each(|i| {
            let (payload, crc) = self.record(i);
            check_record(&self.path, self.header.dataset.first_block + i, payload, crc)
        })
    }

    /// Local record `i`'s payload and stored checksum (bounds checked when the file opened).
    fn record(&self, i: usize) -> (&[u8], u32) {
        let off = self.index[i].0 as usize;
        let len = u32::from_le_bytes(self.map[off..off + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(self.map[off + 4 + len..off + 8 + len].try_into().expect("4"));
        (&self.map[off + 4..off + 4 + len], crc)
    }

    /// Decodes local record `i` (`0 ≤ i < num_blocks`) into `out`, checking its checksum.
    ///
    /// # Errors
    /// [`TrainError::TeacherLogits`] naming the file, the block and the problem.
    pub fn read_block(&self, i: usize, out: &mut SparseBlock) -> Result<()> {
        let global = self.header.dataset.first_block + i;
        if i >= self.index.len() {
            return Err(corrupt(
                &self.path,
                format!("no record {i} (it holds {})", self.index.len()),
            ));
        }
        let (payload, crc) = self.record(i);
        check_record(&self.path, global, payload, crc)?;
        decode(&self.header, payload, out)
            .map_err(|e| corrupt(&self.path, format!("block {global}: {e}")))
    }
}

fn decode(
    h: &Header,
    payload: &[u8],
    out: &mut SparseBlock,
) -> std::result::Result<(), codec::DecodeError> {
    codec::decode_block(payload, h.dataset.seq_len, h.k, h.vocab_size, h.quantizer(), out)
}

/// Reads a teacher-logits file front to back from any reader (a pipe, a file larger than
/// memory): the header, then each record with its checksum checked. Yields
/// `(block, SparseBlock)` pairs in order; the index and footer are not needed (and not read).
#[derive(Debug)]
pub struct TeacherLogitsStream<R: Read> {
    name: PathBuf,
    reader: R,
    header: Header,
    next: usize,
    buf: Vec<u8>,
}

impl<R: Read> TeacherLogitsStream<R> {
    /// Reads the header from `reader`; `name` names the source in errors.
    ///
    /// # Errors
    /// [`TrainError::TeacherLogits`] for a bad header; [`TrainError::Io`].
    pub fn new(name: &Path, mut reader: R) -> Result<Self> {
        let mut head = vec![0u8; 16];
        reader.read_exact(&mut head).map_err(|_| corrupt(name, "truncated inside its header"))?;
        if &head[..8] != MAGIC {
            return Err(corrupt(
                name,
                "not a teacher-logits file (no KDTLOGIT magic at its start)",
            ));
        }
        let len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
        if len > 1 << 24 {
            return Err(corrupt(name, format!("a header of {len} bytes")));
        }
        head.resize(20 + len, 0);
        reader
            .read_exact(&mut head[16..])
            .map_err(|_| corrupt(name, "truncated inside its header"))?;
        let (header, _) = parse_header(name, &head)?;
        Ok(Self { name: name.to_path_buf(), reader, header, next: 0, buf: Vec::new() })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next block (its global index and contents), `None` after the last.
    ///
    /// # Errors
    /// [`TrainError::TeacherLogits`] for a truncated or corrupt record.
    pub fn next_block(&mut self, out: &mut SparseBlock) -> Result<Option<usize>> {
        if self.next == self.header.dataset.num_blocks {
            return Ok(None);
        }
        let global = self.header.dataset.first_block + self.next;
        let cut = |_| corrupt(&self.name, format!("truncated inside block {global}"));
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len).map_err(cut)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > 1 << 30 {
            return Err(corrupt(&self.name, format!("block {global}: a record of {len} bytes")));
        }
        self.buf.resize(len + 4, 0);
        self.reader.read_exact(&mut self.buf).map_err(cut)?;
        let crc = u32::from_le_bytes(self.buf[len..].try_into().expect("4 bytes"));
        check_record(&self.name, global, &self.buf[..len], crc)?;
        decode(&self.header, &self.buf[..len], out)
            .map_err(|e| corrupt(&self.name, format!("block {global}: {e}")))?;
        self.next += 1;
        Ok(Some(global))
    }
}

/// The shards of one precompute run, opened together as one logical file ordered by block.
#[derive(Debug)]
pub struct TeacherLogits {
    files: Vec<TeacherLogitsFile>,
    header: Header,
}

impl TeacherLogits {
    /// Opens a directory of shards (every `*.kdtl` file in it) or one file. Every shard of the
    /// run must be there exactly once, and all must describe the same run.
    ///
    /// # Errors
    /// [`TrainError::TeacherLogits`] naming a missing shard (and the file name it would have),
    /// a shard present twice (both files), a shard of another run, or a corrupt file.
    pub fn open(path: &Path) -> Result<Self> {
        let paths = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| TrainError::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == EXTENSION))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(corrupt(path, format!("no *.{EXTENSION} files in the directory")));
            }
            v
        } else {
            vec![path.to_path_buf()]
        };
        let mut by_index: BTreeMap<usize, TeacherLogitsFile> = BTreeMap::new();
        let mut first: Option<Header> = None;
        for p in paths {
            let f = TeacherLogitsFile::open(&p)?;
            let h = f.header().clone();
            match &first {
                None => first = Some(h.clone()),
                Some(h0) if !h0.same_run(&h) => {
                    return Err(corrupt(
                        &p,
                        format!(
                            "belongs to another run than {} (teacher, data, k, quantiser or shard count differ)",
                            by_index
                                .values()
                                .next()
                                .map_or(String::new(), |f| f.path.display().to_string())
                        ),
                    ));
                }
                Some(_) => {}
            }
            if let Some(other) = by_index.get(&h.dataset.shard.index) {
                return Err(corrupt(
                    &p,
                    format!(
                        "shard {}/{} is present twice: {} and {}",
                        h.dataset.shard.index,
                        h.dataset.shard.count,
                        other.path.display(),
                        p.display()
                    ),
                ));
            }
            by_index.insert(h.dataset.shard.index, f);
        }
        let header = first.expect("at least one file");
        let count = header.dataset.shard.count;
        if let Some(missing) = (0..count).find(|i| !by_index.contains_key(i)) {
            let name = Shard { index: missing, count }.file_name();
            return Err(corrupt(
                path,
                format!("shard {missing}/{count} is missing (expected a file like {name})"),
            ));
        }
        Ok(Self { files: by_index.into_values().collect(), header })
    }

    /// The run's header (of shard 0; the others differ only in their place).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The shard files, in order.
    pub fn files(&self) -> &[TeacherLogitsFile] {
        &self.files
    }

    /// Blocks over all shards.
    pub fn total_blocks(&self) -> usize {
        self.header.dataset.blocks
    }

    /// Bytes over all shards.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(TeacherLogitsFile::bytes).sum()
    }

    fn locate(&self, block: usize) -> Option<(&TeacherLogitsFile, usize)> {
        let i = self.files.partition_point(|f| {
            let d = &f.header().dataset;
            d.first_block + d.num_blocks <= block
        });
        let f = self.files.get(i)?;
        let local = block.checked_sub(f.header().dataset.first_block)?;
        (local < f.header().dataset.num_blocks).then_some((f, local))
    }

    /// Decodes block `block` (over all shards) into `out`.
    ///
    /// # Errors
    /// [`TrainError::TeacherLogits`] for a block beyond the data or a corrupt record.
    pub fn read_block(&self, block: usize, out: &mut SparseBlock) -> Result<()> {
        let (f, local) = self.locate(block).ok_or_else(|| {
            corrupt(
                &self.files[0].path,
                format!("no block {block}: the files hold {} blocks", self.total_blocks()),
            )
        })?;
        f.read_block(local, out)
    }

    /// Checks that the file was written for `data`: the same block length, at least as many
    /// blocks, and block `i`'s tokens hash to the file's record `i` for every block of `data`
    /// (so every stored distribution sits on the tokens the student reads). `vocab` is the
    /// student's vocabulary size, which must equal the teacher's. Then every record's checksum
    /// is checked ([`TeacherLogitsFile::verify_records`]), so a corrupt file stops a run before
    /// its first step rather than in the middle.
    ///
    /// # Errors
    /// [`TrainError::TeacherLogits`] naming the first mismatch or corrupt block.
    pub fn check_matches(&self, data: &TokenDataset, vocab: usize) -> Result<()> {
        let h = &self.header;
        let path = &self.files[0].path;
        if h.vocab_size != vocab {
            return Err(corrupt(
                path,
                format!(
                    "written for a vocabulary of {}, the student's has {vocab} (another tokenizer?)",
                    h.vocab_size
                ),
            ));
        }
        if h.dataset.seq_len != data.seq_len() {
            return Err(corrupt(
                path,
                format!(
                    "written for blocks of {} tokens, the training data has blocks of {} (data.seq_len)",
                    h.dataset.seq_len,
                    data.seq_len()
                ),
            ));
        }
        if h.dataset.blocks < data.len() {
            return Err(corrupt(
                path,
                format!(
                    "holds {} blocks, the training data has {} (written for other data?)",
                    h.dataset.blocks,
                    data.len()
                ),
            ));
        }
        for (i, b) in data.blocks.iter().enumerate() {
            let (f, local) = self.locate(i).expect("checked the block count");
            if f.token_hash(local) != block_hash(&b.input_ids) {
                return Err(corrupt(
                    f.path(),
                    format!(
                        "block {i} was computed on other tokens than the training data's block {i} \
                         (other data, tokenizer, seq_len or split)"
                    ),
                ));
            }
        }
        self.files.iter().try_for_each(TeacherLogitsFile::verify_records)
    }
}
