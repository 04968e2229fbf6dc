//! Writing one embedding per image to a file other tools read: `.npy`,
//! `.safetensors` or `.csv`, chosen by the file's extension.
//!
//! - **`.npy`**: a NumPy array, `float32`, C order, shape `[n, dim]`
//!   (`numpy.load(path)`); the names go to a sidecar text file beside it,
//!   the same path with `.names.txt` in place of `.npy`, one name per line,
//!   in row order.
//! - **`.safetensors`**: one tensor `embeddings`, `F32`, `[n, dim]`; the
//!   names are in the header's metadata under `names`, as a JSON array of
//!   strings (`json.loads(safe_open(path, "np").metadata()["names"])`).
//! - **`.csv`**: a header `name,d0,d1,...` then one line per image: its
//!   name, then its values (shortest decimal that reads back to the same
//!   `f32`). Names are quoted as RFC 4180 says when they hold a comma, a
//!   quote or a line break.
//!
//! A name is [`Dataset::name`](byol_data::Dataset::name): the relative path
//! in an image folder, else file and record (`t10k-images-idx3-ubyte#12`).
//! In the `.names.txt` sidecar a line break inside a name is written as
//! `\n` (`\r` as `\r`), the only escapes.
//!
//! Rows are streamed as they come (the header of each format is written
//! first: the number of rows is known in advance), into a hidden temporary
//! file beside the target that is renamed into place by
//! [`EmbeddingWriter::finish`], so an interrupted run leaves no truncated
//! file under the requested name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::EvalError;

/// The file formats of [`EmbeddingWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingFormat {
    /// NumPy `.npy` plus a `.names.txt` sidecar.
    Npy,
    /// safetensors, names in the metadata.
    Safetensors,
    /// Comma-separated text: name, then the values.
    Csv,
}

impl EmbeddingFormat {
    /// The format of a path's extension (case-insensitive).
    ///
    /// # Errors
    ///
    /// [`EvalError::UnknownFormat`] naming the path for any other extension.
    pub fn from_path(path: &Path) -> Result<Self, EvalError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("npy") => Ok(Self::Npy),
            Some("safetensors") => Ok(Self::Safetensors),
            Some("csv") => Ok(Self::Csv),
            _ => Err(EvalError::UnknownFormat(path.to_path_buf())),
        }
    }
}

/// The sidecar file of names of an `.npy` output: `x.npy` → `x.names.txt`.
pub fn names_path(npy: &Path) -> PathBuf {
    npy.with_extension("names.txt")
}

/// The header of an `.npy` file (format version 1.0) of a C-order
/// little-endian `float32` array `[rows, dim]`, padded so that the data
/// starts at a multiple of 64 bytes.
pub fn npy_header(rows: usize, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    // magic (6) + version (2) + header length (2) + dict + padding + '\n'
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let mut text = dict.into_bytes();
    text.resize(total - 10 - 1, b' ');
    text.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    // the dict of a 2-D float array is far below 65,535 bytes
    out.extend((text.len() as u16).to_le_bytes());
    out.extend(text);
    out
}

/// The header of a safetensors file with one `F32` tensor `embeddings`
/// `[rows, dim]` and the names in its metadata, padded to 8 bytes.
fn safetensors_header(rows: usize, dim: usize, names: &[String]) -> Result<Vec<u8>, EvalError> {
    let names = serde_json::to_string(names).map_err(|e| EvalError::Data(e.to_string()))?;
    let header = serde_json::json!({
        "__metadata__": { "names": names, "format": "byol-rs embeddings" },
        "embeddings": {
            "dtype": "F32",
            "shape": [rows, dim],
            "data_offsets": [0, rows * dim * 4],
        },
    });
    let mut text = serde_json::to_vec(&header).map_err(|e| EvalError::Data(e.to_string()))?;
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    Ok(out)
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes embeddings row by row in one of the [`EmbeddingFormat`]s.
#[derive(Debug)]
pub struct EmbeddingWriter {
    format: EmbeddingFormat,
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    names: Vec<String>,
    dim: usize,
    written: usize,
}

impl EmbeddingWriter {
    /// Starts the file at `path` (format from its extension) for
    /// `names.len()` rows of `dim` values.
    ///
    /// # Errors
    ///
    /// [`EvalError::UnknownFormat`] for an unknown extension,
    /// [`EvalError::Output`] naming the file when it cannot be created.
    pub fn create(path: &Path, names: Vec<String>, dim: usize) -> Result<Self, EvalError> {
        let format = EmbeddingFormat::from_path(path)?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file_name}.partial"));
        let file = File::create(&tmp).map_err(|e| output_err(path, e))?;
        let mut writer = Self {
            format,
            path: path.to_path_buf(),
            tmp,
            out: BufWriter::new(file),
            names,
            dim,
            written: 0,
        };
        let rows = writer.names.len();
        let header = match format {
            EmbeddingFormat::Npy => npy_header(rows, dim),
            EmbeddingFormat::Safetensors => safetensors_header(rows, dim, &writer.names)?,
            EmbeddingFormat::Csv => {
                let mut line = String::from("name");
                for d in 0..dim {
                    line.push_str(&format!(",d{d}"));
                }
                line.push('\n');
                line.into_bytes()
            }
        };
        writer.write_bytes(&header)?;
        Ok(writer)
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), EvalError> {
        self.out
            .write_all(bytes)
            .map_err(|e| output_err(&self.path, e))
    }

    /// Appends rows: `values` holds whole rows of `dim` values, row-major.
    ///
    /// # Errors
    ///
    /// [`EvalError::Output`] on a write failure or when `values` is not a
    /// whole number of rows or holds more rows than announced.
    pub fn write_rows(&mut self, values: &[f32]) -> Result<(), EvalError> {
        // `dim == 0` takes only empty rows
        let rows = values.len().checked_div(self.dim).unwrap_or(0);
        if (self.dim == 0 && !values.is_empty())
            || (self.dim > 0 && !values.len().is_multiple_of(self.dim))
            || self.written + rows > self.names.len()
        {
            return Err(output_err(
                &self.path,
                format!(
                    "{} values do not make whole rows of {} within the {} announced",
                    values.len(),
                    self.dim,
                    self.names.len()
                ),
            ));
        }
        match self.format {
            EmbeddingFormat::Npy | EmbeddingFormat::Safetensors => {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.write_bytes(&bytes)?;
            }
            EmbeddingFormat::Csv => {
                let mut text = String::new();
                for (i, row) in values.chunks_exact(self.dim.max(1)).enumerate() {
                    text.push_str(&csv_field(&self.names[self.written + i]));
                    for v in row {
                        text.push(',');
                        text.push_str(&v.to_string());
                    }
                    text.push('\n');
                }
                self.write_bytes(text.as_bytes())?;
            }
        }
        self.written += rows;
        Ok(())
    }

    /// Checks that every announced row came, syncs the file, renames it into
    /// place and, for `.npy`, writes the names sidecar. Returns the files
    /// written.
    ///
    /// # Errors
    ///
    /// [`EvalError::Output`] naming the file.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, EvalError> {
        if self.written != self.names.len() {
            return Err(output_err(
                &self.path,
                format!(
                    "{} rows written of the {} announced",
                    self.written,
                    self.names.len()
                ),
            ));
        }
        self.out.flush().map_err(|e| output_err(&self.path, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| output_err(&self.path, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| output_err(&self.path, e))?;
        let mut files = vec![self.path.clone()];
        if self.format == EmbeddingFormat::Npy {
            let sidecar = names_path(&self.path);
            let mut text = String::new();
            for name in &self.names {
                text.push_str(&name.replace('\n', "\\n").replace('\r', "\\r"));
                text.push('\n');
            }
            std::fs::write(&sidecar, text).map_err(|e| output_err(&sidecar, e))?;
            files.push(sidecar);
        }
        Ok(files)
    }
}

/// An unfinished writer (an error on the way) removes its temporary file.
impl Drop for EmbeddingWriter {
    fn drop(&mut self) {
        // after `finish` the file was renamed away and this is a no-op
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn output_err(path: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("img-{i}.png")).collect()
    }

    fn write(path: &Path, names: Vec<String>, values: &[f32], dim: usize) -> Vec<PathBuf> {
        let mut w = EmbeddingWriter::create(path, names, dim).expect("created");
        // in two pieces, as batches come
        let half = (values.len() / dim / 2) * dim;
        w.write_rows(&values[..half]).expect("rows");
        w.write_rows(&values[half..]).expect("rows");
        w.finish().expect("finished")
    }

    #[test]
    fn npy_header_is_padded_to_64_bytes_and_names_the_shape() {
        for (rows, dim) in [(0, 1), (3, 128), (123_456, 2048)] {
            let h = npy_header(rows, dim);
            assert_eq!(h.len() % 64, 0);
            assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
            let len = u16::from_le_bytes([h[8], h[9]]) as usize;
            assert_eq!(10 + len, h.len());
            let text = std::str::from_utf8(&h[10..]).expect("ascii");
            assert!(
                text.contains(&format!("'shape': ({rows}, {dim})")),
                "{text}"
            );
            assert!(text.ends_with('\n'));
        }
    }

    #[test]
    fn npy_file_holds_the_values_after_the_header_and_names_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("emb.npy");
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        let files = write(&path, names(4), &values, 3);
        assert_eq!(files, vec![path.clone(), dir.path().join("emb.names.txt")]);
        let bytes = std::fs::read(&path).expect("written");
        let header = npy_header(4, 3);
        assert_eq!(&bytes[..header.len()], &header[..]);
        let back: Vec<f32> = bytes[header.len()..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(back, values);
        let listed = std::fs::read_to_string(&files[1]).expect("names");
        assert_eq!(listed.lines().collect::<Vec<_>>(), names(4));
        // nothing else is left in the folder
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 2);
    }

    #[test]
    fn safetensors_file_reads_back_with_names_in_the_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("emb.safetensors");
        let values: Vec<f32> = (0..10).map(|i| (i as f32).sin()).collect();
        let mut names = names(5);
        names[2] = "a \"quoted\", odd\nname".into();
        write(&path, names.clone(), &values, 2);
        let bytes = std::fs::read(&path).expect("written");
        let file = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let t = file.tensor("embeddings").expect("tensor");
        assert_eq!(t.shape(), &[5, 2]);
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let back: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(back, values);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
        let listed: Vec<String> = serde_json::from_str(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("names"))
                .expect("names in the metadata"),
        )
        .expect("a JSON list");
        assert_eq!(listed, names);
    }

    #[test]
    fn csv_has_a_name_then_the_values_on_each_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("emb.CSV");
        let values = [0.1f32, -2.0, 3.5e-8, 1.0];
        let names = vec!["a,b".to_string(), "plain".to_string()];
        write(&path, names, &values, 2);
        let text = std::fs::read_to_string(&path).expect("written");
        assert_eq!(text, "name,d0,d1\n\"a,b\",0.1,-2\nplain,0.000000035,1\n");
    }

    #[test]
    fn unknown_extensions_and_wrong_row_counts_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = EmbeddingWriter::create(&dir.path().join("emb.parquet"), names(1), 2)
            .expect_err("parquet");
        assert!(err.to_string().contains("emb.parquet"), "{err}");
        let err = EmbeddingWriter::create(&dir.path().join("emb"), names(1), 2).expect_err("none");
        assert!(matches!(err, EvalError::UnknownFormat(_)), "{err}");
        let path = dir.path().join("emb.npy");
        let mut w = EmbeddingWriter::create(&path, names(2), 2).expect("created");
        assert!(w.write_rows(&[1.0, 2.0, 3.0]).is_err(), "half a row");
        w.write_rows(&[1.0, 2.0]).expect("one row");
        let err = w.finish().expect_err("one row of two");
        assert!(err.to_string().contains("1 rows written of the 2"), "{err}");
        assert!(!path.exists(), "no file under the requested name");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "no stray file"
        );
    }
}
